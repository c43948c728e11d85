"""Object storage (a real S3 API: moto's server on 127.0.0.1) and a cluster started from the
command line (``dask scheduler`` + ``dask worker``), with the dashboard watched while it runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import torch
from helpers import command_line_cluster, cxrdask

from cxrdask.archive.synthetic import make_archive
from cxrdask.evaluation.report import evaluate
from cxrdask.extract.run import extract_features
from cxrdask.head.train import TrainConfig, train_head
from cxrdask.store.features import FeatureStore
from cxrdask.testing import local_s3_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free loopback port, with a bucket; yields storage_options."""
    with local_s3_server("cxr") as options:
        yield options


def test_s3_pipeline_equals_local(s3, small_archive, cluster_client, tmp_path):
    # The same seed and size as the local small_archive: the same bytes, now in a bucket.
    archive = make_archive("s3://cxr/archive", n=80, size=128, seed=3, threads=1,
                           storage_options=s3)
    store_url = "s3://cxr/features.zarr"
    summary = extract_features(archive.metadata_url, archive.root, store_url,
                               client=cluster_client, weights="random", chunk_rows=16,
                               storage_options=s3, progress=False)
    assert summary.rows_failed == 0 and summary.chunks_run == 5
    local_url = str(tmp_path / "local.zarr")
    extract_features(small_archive.metadata_url, small_archive.root, local_url,
                     client=cluster_client, weights="random", chunk_rows=16, progress=False)
    remote = FeatureStore.open(store_url, storage_options=s3)
    local = FeatureStore.open(local_url)
    np.testing.assert_array_equal(remote.features.compute(), local.features.compute())
    assert remote.table().equals(local.table())
    config = TrainConfig(epochs=3, batch_size=16)
    torch.manual_seed(0)
    remote_head = train_head(store_url, config, tmp_path / "remote", storage_options=s3,
                             progress=False)
    local_head = train_head(local_url, config, tmp_path / "local", progress=False)
    assert remote_head.history["val_loss"].tolist() == local_head.history["val_loss"].tolist()
    remote_report = evaluate(store_url, remote_head.checkpoint, storage_options=s3)
    local_report = evaluate(local_url, local_head.checkpoint)
    assert remote_report.table["auc"].equals(local_report.table["auc"])
    # Resume works against object storage too.
    again = extract_features(archive.metadata_url, archive.root, store_url,
                             client=cluster_client, weights="random", chunk_rows=16,
                             storage_options=s3, progress=False)
    assert (again.chunks_run, again.chunks_skipped) == (0, 5)


def test_cli_reads_storage_options(s3, small_archive, tmp_path):
    endpoint = s3["client_kwargs"]["endpoint_url"]
    options = ["--storage-option", "key=testing", "--storage-option", "secret=testing",
               "--storage-option",
               f'client_kwargs={{"endpoint_url": "{endpoint}", "region_name": "us-east-1"}}']
    run = subprocess.run([sys.executable, "-m", "cxrdask.cli", "synth", "s3://cxr/cli-archive",
                          "--n", "20", "--size", "64", "--workers", "1", "--quiet", *options],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([sys.executable, "-m", "cxrdask.cli", "extract", "--images",
                          "s3://cxr/cli-archive", "--store", "s3://cxr/cli.zarr", "--weights",
                          "random", "--workers", "1", "--chunk-rows", "10", "--quiet", *options],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert FeatureStore.open("s3://cxr/cli.zarr", storage_options=s3).is_complete()


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes, started as a user would; always
    stopped. Yields the scheduler's address, its dashboard and the folder of their logs."""
    logs = tmp_path_factory.mktemp("cli-cluster-logs")
    with command_line_cluster(n_workers=2, log_dir=logs) as (address, dashboard):
        yield address, dashboard, logs


def test_cli_on_a_cluster_started_from_the_command_line(cli_cluster, small_archive, tmp_path):
    address, dashboard, logs = cli_cluster
    store = str(tmp_path / "f.zarr")
    statuses: list[int] = []
    stop = threading.Event()

    def watch_dashboard() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{dashboard}/status", timeout=5) as response:
                    statuses.append(response.status)
            except OSError:
                statuses.append(0)
            stop.wait(0.5)

    watcher = threading.Thread(target=watch_dashboard)
    watcher.start()
    try:
        run = cxrdask(
            "extract", "--images", small_archive.root, "--store", store, "--weights", "random",
            "--chunk-rows", "8", "--scheduler", address, "--performance-report",
            str(tmp_path / "report.html"), "--quiet",
            timeout=240, scheduler=address, log_dir=logs)
    finally:
        stop.set()
        watcher.join()
    assert run.returncode == 0, run.stderr
    assert f"Dask dashboard: {dashboard}/status" in run.stdout
    assert 200 in statuses
    assert "chunks: 10 run" in run.stdout and "seconds per stage and worker" in run.stdout
    assert (tmp_path / "report.html").stat().st_size > 10_000
    grid = cxrdask(
        "train", "--store", store, "--out", str(tmp_path / "grid"), "--grid", "--grid-lrs",
        "1e-3,3e-3", "--grid-weight-decays", "0", "--epochs", "2", "--batch-size", "8",
        "--scheduler", address, "--quiet",
        timeout=240, scheduler=address, log_dir=logs)
    assert grid.returncode == 0, grid.stderr
    assert "best: lr" in grid.stdout and (tmp_path / "grid" / "head.pt").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_extraction_matches_cpu(small_archive, tmp_path):
    from cxrdask.runtime.cluster import local_client

    with local_client(n_workers=1, dashboard_address="127.0.0.1:0", announce=False) as client:
        cpu = extract_features(small_archive.metadata_url, small_archive.root,
                               str(tmp_path / "cpu.zarr"), client=client, weights="random",
                               device="cpu", progress=False)
        gpu = extract_features(small_archive.metadata_url, small_archive.root,
                               str(tmp_path / "gpu.zarr"), client=client, weights="random",
                               device="cuda", precision="fp16", batch_size=64, progress=False)
    assert gpu.rows_written == cpu.rows_written
    a = FeatureStore.open(str(tmp_path / "cpu.zarr")).features.compute().astype(np.float32)
    b = FeatureStore.open(str(tmp_path / "gpu.zarr")).features.compute().astype(np.float32)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999
    assert FeatureStore.open(str(tmp_path / "gpu.zarr")).provenance["precision"] == "fp16"
