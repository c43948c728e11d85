"""Dask clients: a local CPU cluster of processes (default), a local GPU cluster, or an address.

The local CPU cluster is tuned for this workload (see PERFORMANCE.md): one single-threaded
worker process per core; the glibc trim and mmap thresholds raised (Dask's default
``MALLOC_TRIM_THRESHOLD_=65536`` cost ~15% here); the statistical profiler off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from .errors import ClusterError

WORKER_ENVIRONMENT = {
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def cluster_config() -> dict:
    """Dask config for the clusters cxrdask starts (pass to ``dask.config.set``)."""
    return {
        "distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT,
        "distributed.worker.profile.enabled": False,
    }


def start_local_cluster(n_workers: int | None = None, threads_per_worker: int = 1,
                        dashboard_address: str | None = ":8787",
                        memory_limit: str | float | None = "auto") -> LocalCluster:
    """A local cluster of worker *processes*, one single-threaded worker per core by default."""
    n_workers = n_workers or os.cpu_count() or 1
    with dask.config.set(cluster_config()):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
            memory_limit=memory_limit,
            host="127.0.0.1",
        )


def start_gpu_cluster(**kwargs) -> LocalCluster:
    """dask-cuda's LocalCUDACluster (the ``gpu`` extra): one worker per visible GPU."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise ClusterError(
            "a GPU cluster needs dask-cuda: pip install 'cxrdask[gpu]'"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise ClusterError("--gpu asked for, but torch sees no CUDA device on this machine")
    with dask.config.set(cluster_config()):
        return LocalCUDACluster(**kwargs)


@contextmanager
def local_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    gpu: bool = False,
    dashboard_address: str | None = ":8787",
    announce: bool = True,
) -> Iterator[Client]:
    """A client to ``scheduler`` if given, else to a new local (GPU) cluster that is closed after.

    The dashboard link is printed, so users can watch the work as it runs.
    """
    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout="20s")
            except OSError as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        else:
            if gpu:
                cluster = start_gpu_cluster(dashboard_address=dashboard_address)
            else:
                cluster = start_local_cluster(n_workers, threads_per_worker, dashboard_address)
            client = Client(cluster)
        if announce:
            print(f"Dask dashboard: {client.dashboard_link}", flush=True)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()
