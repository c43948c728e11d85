"""Shared fixtures: small synthetic archives and one real 2-process Dask cluster per session."""

from __future__ import annotations

import os
import tempfile

import pytest

from cxrdask.archive.synthetic import make_archive

os.environ.setdefault("TQDM_DISABLE", "1")
# ONNX exports are cached for the test session (and its worker processes), not in ~/.cache.
os.environ.setdefault("CXRDASK_CACHE_DIR", tempfile.mkdtemp(prefix="cxrdask-test-cache-"))


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory):
    """80 images of 128x128 (tiny, for tests that do not need signal)."""
    root = tmp_path_factory.mktemp("archive")
    return make_archive(str(root), n=80, size=128, seed=3, threads=1)


@pytest.fixture(scope="session")
def cluster_client():
    """A real LocalCluster of 2 worker processes (1 thread each), as users run it."""
    from cxrdask.runtime.cluster import local_client

    with local_client(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      announce=False) as client:
        yield client


@pytest.fixture(scope="session")
def trained_checkpoint(small_archive, cluster_client, tmp_path_factory):
    """A head trained for a few epochs on random-weight ResNet50 features of ``small_archive``."""
    from cxrdask.extract.run import extract_features
    from cxrdask.head.train import TrainConfig, train_head

    out = tmp_path_factory.mktemp("trained")
    store = str(out / "features.zarr")
    extract_features(small_archive.metadata_url, small_archive.root, store, client=cluster_client,
                     weights="random", chunk_rows=40, split="patient", progress=False)
    result = train_head(store, TrainConfig(epochs=3, batch_size=16), out / "head", progress=False)
    return result.checkpoint
