"""Faults and bad input: killed workers and clients, concurrent writers, bad images.

Each fault ends with the store compared to a clean run's: nothing lost, nothing doubled.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import report_if_stalled
from PIL import Image

from cxrdask.extract.run import extract_features
from cxrdask.runtime.cluster import local_client
from cxrdask.store.features import STATUS_FAILED, STATUS_OK, FeatureStore
from cxrdask.store.lease import LEASE_NAME, StoreLease, StoreLockedError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(small_archive, cluster_client, tmp_path_factory):
    """A clean run's store: what every faulty run must end equal to."""
    url = str(tmp_path_factory.mktemp("reference") / "features.zarr")
    extract_features(small_archive.metadata_url, small_archive.root, url, client=cluster_client,
                     weights="random", chunk_rows=8, progress=False)
    return FeatureStore.open(url)


def assert_same_store(url: str, reference: FeatureStore) -> None:
    store = FeatureStore.open(url)
    assert store.is_complete()
    assert (store.array("status")[:] == STATUS_OK).all()
    np.testing.assert_array_equal(store.features.compute(), reference.features.compute())
    assert store.table().equals(reference.table())


def test_lease_refuses_a_second_writer_and_expires(tmp_path):
    url = str(tmp_path / "s.zarr")
    with StoreLease(url, timeout_seconds=30):
        with pytest.raises(StoreLockedError, match="being written by another run"):
            StoreLease(url).acquire()
    StoreLease(url).acquire().release()  # released: free again
    # A lease left by a process that no longer exists on this host is stale at once ...
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    record = {"token": "x", "host": os.uname().nodename, "pid": int(dead),
              "started": time.time(), "renewed": time.time()}
    (tmp_path / "s.zarr" / LEASE_NAME).write_text(json.dumps(record))
    StoreLease(url).acquire().release()
    # ... and one on another host only once it has not been renewed for the timeout.
    record.update(host="elsewhere", renewed=time.time())
    (tmp_path / "s.zarr" / LEASE_NAME).write_text(json.dumps(record))
    with pytest.raises(StoreLockedError):
        StoreLease(url, timeout_seconds=60).acquire()
    record.update(renewed=time.time() - 120)
    (tmp_path / "s.zarr" / LEASE_NAME).write_text(json.dumps(record))
    StoreLease(url, timeout_seconds=60).acquire().release()


def done_count(url: str) -> int:
    try:
        return int(FeatureStore.open(url).done_chunks().sum())
    except Exception:
        return 0


def extract_while(fault, archive, url: str, client):
    """Extract ``archive`` into ``url`` on ``client`` while ``fault`` runs in a thread; a run
    still going after 240 s prints what the cluster is doing (the tests time out at 300)."""
    injector = threading.Thread(target=fault)
    injector.start()
    finished = threading.Event()
    threading.Thread(target=report_if_stalled, args=(finished, client, 240), daemon=True).start()
    try:
        return extract_features(archive.metadata_url, archive.root, url, client=client,
                                weights="random", chunk_rows=8, progress=False)
    finally:
        finished.set()
        injector.join()


def test_worker_killed_mid_run(small_archive, reference, tmp_path):
    url = str(tmp_path / "f.zarr")
    with local_client(n_workers=2, dashboard_address="127.0.0.1:0", announce=False) as client:
        pids = list(client.run(os.getpid).values())
        killed = []

        def kill_when_started() -> None:
            deadline = time.time() + 120
            while done_count(url) < 1 and time.time() < deadline:
                time.sleep(0.05)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        summary = extract_while(kill_when_started, small_archive, url, client)
    assert killed and summary.chunks_run == 10
    assert_same_store(url, reference)


def extract_command(archive, store, workers=1):
    return [sys.executable, "-m", "cxrdask.cli", "extract", "--images", archive.root,
            "--store", store, "--weights", "random", "--chunk-rows", "8",
            "--workers", str(workers), "--quiet"]


def test_client_killed_then_rerun_resumes(small_archive, reference, tmp_path):
    url = str(tmp_path / "f.zarr")
    run = subprocess.Popen(extract_command(small_archive, url), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while done_count(url) < 3 and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the client and its cluster, all at once
    run.wait()
    finished = done_count(url)
    assert 3 <= finished < 10
    # A chunk whose data landed but whose marker did not: recomputed, never trusted.
    store = FeatureStore.open(url, mode="r+")
    chunk = int(np.flatnonzero(~store.done_chunks())[0])
    start, stop = store.chunk_bounds(chunk)
    store.group["features"][start:stop] = 1.0
    store.group["status"][start:stop] = STATUS_OK
    again = subprocess.run(extract_command(small_archive, url, workers=2), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{finished} skipped as already done" in again.stdout
    assert_same_store(url, reference)


def _interrupt_when(run: subprocess.Popen, url: str, chunks: int, presses: int) -> float:
    """Press Ctrl-C ``presses`` times (SIGINT to the whole process group, as a terminal does)
    once ``chunks`` chunks are done; the seconds from the first press to the exit."""
    deadline = time.time() + 180
    while done_count(url) < chunks and time.time() < deadline and run.poll() is None:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be interrupted"
    pressed = time.time()
    for press in range(presses):
        if press:
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGINT)
    run.wait(timeout=60)
    return time.time() - pressed


@pytest.mark.timeout(400)
def test_ctrl_c_cancels_releases_the_lease_and_the_run_resumes(small_archive, reference, tmp_path):
    url = str(tmp_path / "f.zarr")
    # One Ctrl-C: outstanding tasks cancelled, the lease released, exit 130, no traceback.
    run = subprocess.Popen(extract_command(small_archive, url, workers=2), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _interrupt_when(run, url, chunks=2, presses=1)
    stderr = run.stderr.read()
    assert run.returncode == 130, stderr
    assert "press Ctrl-C again" in stderr and "Traceback" not in stderr
    finished = done_count(url)
    assert 2 <= finished < 10  # interrupted while work remained
    assert not (tmp_path / "f.zarr" / LEASE_NAME).exists()  # released, not left to expire
    # Two presses: out at once, whatever the cleanup was doing.
    run = subprocess.Popen(extract_command(small_archive, url, workers=2), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = _interrupt_when(run, url, chunks=finished + 1, presses=2)
    stderr = run.stderr.read()
    assert run.returncode == 130 and "interrupted again: exiting now" in stderr, stderr
    assert seconds < 5
    assert done_count(url) < 10
    # The same command again finishes the store, equal to a clean run.
    again = subprocess.run(extract_command(small_archive, url, workers=2), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert_same_store(url, reference)


def test_second_extraction_on_same_store_is_refused(small_archive, reference, tmp_path):
    url = str(tmp_path / "f.zarr")
    first = subprocess.Popen(extract_command(small_archive, url), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(url, LEASE_NAME)) and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(extract_command(small_archive, url), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2 and "being written by another run" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert_same_store(url, reference)


def write_png(path, image: Image.Image, fmt="PNG") -> None:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())


def test_bad_and_odd_images_end_to_end(small_archive, cluster_client, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(small_archive.root, root)
    folder = root / "images_001" / "images"
    names = sorted(os.listdir(folder))
    gray = np.asarray(Image.open(folder / names[10]))
    write_png(folder / names[0], Image.fromarray(gray).convert("RGBA"))
    write_png(folder / names[1], Image.fromarray(gray.astype(np.uint16) * 257))
    write_png(folder / names[2], Image.fromarray(gray).resize((512, 512)))
    write_png(folder / names[3], Image.fromarray(gray).resize((3000, 2500)))
    write_png(folder / names[4], Image.fromarray(gray), fmt="JPEG")
    write_png(folder / names[5], Image.new("1", (10_000, 10_000)))  # 100 Mpx: a bomb
    data = (folder / names[6]).read_bytes()
    (folder / names[6]).write_bytes(data[: len(data) // 3])  # truncated
    (folder / names[7]).write_bytes(b"")
    (folder / names[8]).write_bytes(os.urandom(4000))
    os.remove(folder / names[9])
    url = str(tmp_path / "f.zarr")
    summary = extract_features(str(root / "Data_Entry_2017.csv"), str(root), url,
                               client=cluster_client, weights="random", chunk_rows=16,
                               max_failed_fraction=0.1, progress=False)  # 5 of 80 fail here
    store = FeatureStore.open(url)
    table = store.table()
    status = dict(zip(table["image_index"], table["status"], strict=True))
    present = set(table["image_index"])
    assert set(names[:10]) <= present  # an 80-image archive has no age-dropped rows
    for name in names[:5]:  # decodable: converted where needed, and used
        assert status[name] == STATUS_OK, name
    for name in names[5:10]:  # undecodable: recorded as failed, with the reason
        assert status[name] == STATUS_FAILED, name
    reasons = dict(summary.failures)
    assert "decompression bomb" in reasons[names[5]]
    assert reasons[names[7]] == "empty file (0 bytes)"
    assert reasons[names[9]] == "file not found"
    conversions = dict(map(tuple, store.provenance["conversions"]))
    for name, note in ((names[0], "RGBA converted to L"), (names[1], "scaled to 8-bit"),
                       (names[4], "JPEG file")):
        assert note in conversions[name]
    failed = set(store.failures()["image_index"])
    assert failed == set(reasons) and len(failed) == summary.rows_failed
    features = store.features.compute()
    assert np.isnan(features[table["status"] == STATUS_FAILED]).all()
    assert np.isfinite(features[table["status"] == STATUS_OK]).all()


@pytest.mark.timeout(300)
def test_worker_killed_during_warm_up_does_not_hang(small_archive, reference, tmp_path):
    """Warm-up tasks were pinned to their worker: one lost then waited forever."""
    url = str(tmp_path / "f.zarr")
    with local_client(n_workers=2, dashboard_address="127.0.0.1:0", announce=False) as client:
        pids = client.run(os.getpid)
        killed = []

        def kill_during_warm_up() -> None:
            deadline = time.time() + 120
            while time.time() < deadline:
                busy = {worker: [k for k in keys if str(k).startswith("backbone-warmup")]
                        for worker, keys in client.processing().items()}
                victim = next((w for w, keys in busy.items() if keys and w in pids), None)
                if victim is not None and done_count(url) == 0:
                    os.kill(pids[victim], signal.SIGKILL)  # while it builds its model
                    killed.append(victim)
                    return
                time.sleep(0.01)

        summary = extract_while(kill_during_warm_up, small_archive, url, client)
    assert killed, "the kill did not land during warm-up"
    assert summary.chunks_run == 10
    assert_same_store(url, reference)


def test_corrupt_chunk_is_named_listed_and_recomputed(small_archive, cluster_client, reference,
                                                     tmp_path):
    from cxrdask.errors import CorruptChunkError
    from cxrdask.head.batches import FeatureBatches

    url = tmp_path / "f.zarr"
    extract_features(small_archive.metadata_url, small_archive.root, str(url), client=cluster_client,
                     weights="random", chunk_rows=8, progress=False)
    damaged = url / "features" / "c" / "2" / "0"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte on disk
    damaged.write_bytes(bytes(data))
    (url / "features" / "c" / "3" / "0").unlink()  # and one chunk lost, its marker still set

    store = FeatureStore.open(str(url))
    with pytest.raises(CorruptChunkError, match="chunk 2 of 'features' is corrupt") as info:
        store.read("features")
    assert info.value.chunk == 2
    with pytest.raises(CorruptChunkError, match="chunk 2 of 'features'"):
        for _ in FeatureBatches(store, "train", 8, shuffle=False):
            pass

    command = [sys.executable, "-m", "cxrdask.cli", "verify", str(url)]
    listed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 4, listed.stdout + listed.stderr
    assert re.search(r"^\s*2\s+features\s+corrupt", listed.stdout, re.M), listed.stdout
    assert re.search(r"^\s*3\s+features\s+missing", listed.stdout, re.M), listed.stdout
    assert "chunk(s) damaged: [2, 3]" in listed.stderr
    repaired = subprocess.run([*command, "--repair"], capture_output=True, text=True, timeout=120)
    assert repaired.returncode == 0 and "cleared the done markers of chunks [2, 3]" in repaired.stdout
    assert list(np.flatnonzero(~FeatureStore.open(str(url)).done_chunks())) == [2, 3]

    again = extract_features(small_archive.metadata_url, small_archive.root, str(url),
                             client=cluster_client, weights="random", chunk_rows=8, progress=False)
    assert again.chunks_run == 2
    assert FeatureStore.open(str(url)).verify().empty
    assert_same_store(str(url), reference)


def _race_for_the_lease(url: str, storage_options=None, contenders: int = 4) -> list[str]:
    """``contenders`` threads take the lease at one barrier; each says won or refused."""
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []
    leases = [StoreLease(url, storage_options) for _ in range(contenders)]

    def contend(lease: StoreLease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("won")
        except StoreLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for lease in leases:
        lease.release()
    return outcomes


def test_runs_starting_together_get_exactly_one_lease_locally_and_on_s3(tmp_path):
    """The lease is made with an exclusive create (O_EXCL; If-None-Match on S3): of runs
    that start at the same instant exactly one proceeds, every time."""
    from cxrdask.testing import local_s3_server

    for round_ in range(10):
        outcomes = _race_for_the_lease(str(tmp_path / f"s{round_}.zarr"))
        assert sorted(outcomes) == ["refused"] * 3 + ["won"], outcomes
    with local_s3_server("leases") as options:
        for round_ in range(5):
            outcomes = _race_for_the_lease(f"s3://leases/s{round_}.zarr", options)
            assert sorted(outcomes) == ["refused"] * 3 + ["won"], outcomes


def test_a_run_that_lost_its_lease_writes_no_chunk(reference, tmp_path):
    """Fencing: a chunk task whose run no longer holds the store's lease (another run took
    it over) refuses to write, and the chunk stays not done."""
    from dataclasses import replace

    from cxrdask.backbones.runner import BackboneSpec
    from cxrdask.extract.task_config import TaskConfig
    from cxrdask.extract.worker import extract_chunk
    from cxrdask.imaging.preprocessing import Preprocessing

    url = str(tmp_path / "copy.zarr")
    shutil.copytree(reference.url, url)
    store = FeatureStore.open(url, mode="r+")
    store.forget_chunks([0])
    start, stop = store.chunk_bounds(0)
    names = list(store.read("image_index")[start:stop])
    ours = StoreLease(url).acquire()
    config = TaskConfig(store_url=url, storage_options=None, backbone=BackboneSpec(weights="random"),
                        preprocessing=Preprocessing(), device="cpu", leases=((url, ours.token),))
    urls = [None] * len(names)  # unreadable here: the fencing check comes before any write
    ours.release()
    theirs = StoreLease(url).acquire()  # another run took the store over
    try:
        with pytest.raises(StoreLockedError, match="lost it"):
            extract_chunk(0, urls, names, [False] * len(names), config)
        assert not FeatureStore.open(url).done_chunks()[0]
        # The holder of the lease writes as usual.
        mine = replace(config, leases=((url, theirs.token),))
        extract_chunk(0, urls, names, [False] * len(names), mine)
        assert FeatureStore.open(url).done_chunks()[0]
    finally:
        theirs.release()


def test_a_run_that_outlasts_its_time_prints_what_the_cluster_is_doing(cluster_client, capsys):
    """The watchdog of the fault tests: a run not finished in time prints each worker's
    tasks and their call stacks (what a hang in CI then shows); a finished one, nothing."""
    finished = threading.Event()
    future = cluster_client.submit(time.sleep, 3, pure=False, key="still-sleeping")
    time.sleep(0.5)
    report_if_stalled(finished, cluster_client, 0.2)
    report = capsys.readouterr().out
    assert "not finished after 0 s" in report and "still-sleeping" in report
    assert "sleep" in report.split("call stacks:", 1)[1]
    future.result()
    finished.set()
    report_if_stalled(finished, cluster_client, 0.2)
    assert capsys.readouterr().out == ""
