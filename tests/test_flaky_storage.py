"""Flaky object storage: faults injected by a proxy in front of a real S3 API (moto).

Every test proves its faults landed while work remained (the proxy counts them) and ends
with a store equal to a clean run's: no row lost, none recorded as failed for a fault of
the network.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from helpers import command_line_cluster, report_if_stalled

from cxrdask.archive.kinds.nih import read_metadata
from cxrdask.archive.synthetic import make_archive
from cxrdask.errors import ExtractionIncompleteError
from cxrdask.extract.run import extract_features
from cxrdask.runtime.retries import is_transient
from cxrdask.store.features import STATUS_FAILED, STATUS_OK, FeatureStore
from cxrdask.testing import FaultyProxy, local_s3_server

pytestmark = pytest.mark.slow
N = 32


@pytest.fixture(scope="module")
def s3_archive():
    """A small archive on a local S3 server, and a clean extraction of it to compare with."""
    with local_s3_server("flaky") as options:
        archive = make_archive("s3://flaky/archive", n=N, size=96, seed=5, threads=2,
                               storage_options=options)
        yield archive, options


def _via(proxy: FaultyProxy, options: dict, **extra) -> dict:
    return {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": proxy.endpoint},
            **extra}


def _extract(archive, options, store, client, **kw):
    metadata = read_metadata(archive.metadata_url, storage_options=options)
    return extract_features(metadata, archive.root, store, client=client, weights="random",
                            chunk_rows=8, split="patient", progress=False,
                            storage_options=options, **kw)


@pytest.fixture(scope="module")
def clean_store(s3_archive, cluster_client, tmp_path_factory):
    archive, options = s3_archive
    store = str(tmp_path_factory.mktemp("clean") / "clean.zarr")
    _extract(archive, options, store, cluster_client)
    return FeatureStore.open(store)


def _assert_equal_stores(url: str, clean: FeatureStore, options: dict | None = None) -> None:
    store = FeatureStore.open(url, storage_options=options)
    assert store.is_complete()
    assert np.array_equal(store.read("status"), clean.read("status"))
    assert (store.read("status") == STATUS_OK).all()
    assert np.array_equal(store.read("features"), clean.read("features"))


def test_random_faults_on_reads_leave_an_identical_store(s3_archive, clean_store, cluster_client,
                                                         tmp_path):
    """20% of image GETs fail (503 or reset) under the default client settings."""
    archive, options = s3_archive
    with FaultyProxy(options["client_kwargs"]["endpoint_url"], fault_rate=0.2, seed=4,
                     only_suffix=".png") as proxy:
        summary = _extract(archive, _via(proxy, options), str(tmp_path / "f.zarr"), cluster_client)
    assert proxy.faults >= 3 and proxy.answered >= N  # faults landed among the reads
    assert summary.rows_failed == 0 and not summary.retriable
    _assert_equal_stores(str(tmp_path / "f.zarr"), clean_store)


def test_cxrdask_retries_what_the_storage_client_gives_up_on(s3_archive, clean_store,
                                                             cluster_client, tmp_path):
    """Each image's first 20 GETs fail: more than botocore and s3fs try in one call, so
    every image needs cxrdask's own retry (backoff, then a new call)."""
    archive, options = s3_archive
    with FaultyProxy(options["client_kwargs"]["endpoint_url"], fail_first=20,
                     only_suffix=".png") as proxy:
        flaky = _via(proxy, options, config_kwargs={"retries": {"max_attempts": 1}})
        summary = _extract(archive, flaky, str(tmp_path / "f.zarr"), cluster_client,
                           read_retries=3)
    assert proxy.faults >= 20 * N
    assert summary.rows_failed == 0 and not summary.retriable
    _assert_equal_stores(str(tmp_path / "f.zarr"), clean_store)


def test_an_outage_leaves_retriable_rows_and_the_next_run_completes(s3_archive, clean_store,
                                                                   cluster_client, tmp_path):
    archive, options = s3_archive
    store = str(tmp_path / "f.zarr")
    with FaultyProxy(options["client_kwargs"]["endpoint_url"], outage_after=20,
                     only_suffix=".png") as proxy:
        flaky = _via(proxy, options, config_kwargs={"retries": {"max_attempts": 1}})
        with pytest.raises(ExtractionIncompleteError, match="run the same extraction again") as caught:
            _extract(archive, flaky, store, cluster_client, read_retries=0)
        summary = caught.value.summary
        assert summary.retriable and summary.rows_failed == 0  # not recorded as failed
        done = FeatureStore.open(store).done_chunks()
        assert done.any() and not done.all()  # the outage came while work remained
        status = FeatureStore.open(store).read("status")
        assert not (status == STATUS_FAILED).any()
        proxy.end_outage()
        resumed = _extract(archive, flaky, store, cluster_client, read_retries=0)
    assert resumed.chunks_skipped == int(done.sum())  # only the unfinished chunks ran again
    _assert_equal_stores(store, clean_store)


def test_faults_on_reads_and_writes_from_s3_into_s3(s3_archive, clean_store, cluster_client):
    """15% of object GETs, HEADs and PUTs fail (503, reset, 500) or stall, the store's
    writes and lease included: every row ok, features identical to a clean run."""
    archive, options = s3_archive
    store = "s3://flaky/read-write-faults.zarr"
    with FaultyProxy(options["client_kwargs"]["endpoint_url"], fault_rate=0.15, seed=4,
                     methods=("GET", "HEAD", "PUT"), stall_seconds=0.5) as proxy:
        summary = _extract(archive, _via(proxy, options), store, cluster_client)
    task_arrays = ("features", "status", "error", "done", "thumbnail", "detail")
    chunks_written = {key for method, key in proxy.faulted
                      if method == "PUT" and "/c/" in key and key.split("/")[2] in task_arrays}
    images_read = {key for method, key in proxy.faulted if method == "GET" and key.endswith(".png")}
    # the faults landed on the chunks tasks write while they ran, and on image reads
    assert len(chunks_written) >= 2 and len(images_read) >= 3, proxy.faulted
    assert summary.rows_failed == 0 and not summary.retriable
    _assert_equal_stores(store, clean_store, options)


@pytest.mark.timeout(400)
def test_worker_killed_while_writing_a_chunk(s3_archive, clean_store, tmp_path):
    """A cluster started from the command line (a scheduler, one worker under its nanny):
    the worker is killed while its first chunk's features are in flight to storage (the
    proxy holds that PUT). Its nanny starts a new worker, which warms up in its first task
    and finishes the run; the store equals a clean run's."""
    from distributed import Client

    archive, options = s3_archive
    store = "s3://flaky/killed-while-writing.zarr"
    killed: list[int] = []
    finished = threading.Event()
    with command_line_cluster(n_workers=1, log_dir=tmp_path) as (address, _), \
            Client(address, timeout="60s") as client, \
            FaultyProxy(options["client_kwargs"]["endpoint_url"],
                        hold="killed-while-writing.zarr/features/c/", hold_seconds=120) as proxy:
        (first_worker,) = client.run(os.getpid).values()

        def kill_while_writing() -> None:
            if proxy.holding.wait(240):  # the worker waits for its write to be answered
                killed.append(int(FeatureStore.open(store, storage_options=options).done_chunks().sum()))
                os.kill(first_worker, signal.SIGKILL)
                time.sleep(0.5)
            proxy.release()  # the write lands after its writer died: never marked done

        injector = threading.Thread(target=kill_while_writing)
        injector.start()
        watchdog = threading.Thread(target=report_if_stalled,
                                    args=(finished, client, 300, tmp_path), daemon=True)
        watchdog.start()
        try:
            summary = _extract(archive, _via(proxy, options), store, client)
        finally:
            finished.set()
            proxy.release()
            injector.join()
        (new_worker,) = client.run(os.getpid).values()
    assert killed == [0], "the kill did not land during a chunk write while work remained"
    assert new_worker != first_worker
    assert summary.chunks_run == N // 8 and summary.rows_failed == 0
    _assert_equal_stores(store, clean_store, options)


def test_transient_and_permanent_errors_are_told_apart():
    import errno

    assert is_transient(ConnectionResetError())
    assert is_transient(OSError(errno.EBUSY, "Please reduce your request rate."))
    assert is_transient(RuntimeError("An error occurred (503) Service Unavailable"))
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise ValueError("wrapped") from inner
    except ValueError as outer:
        assert is_transient(outer)
    assert not is_transient(FileNotFoundError("no such key"))
    assert not is_transient(PermissionError("AccessDenied"))
    assert not is_transient(ValueError("cannot identify image file"))
