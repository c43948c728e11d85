"""Dask clients: a local CPU cluster of processes (default), a local GPU cluster, or an address.

The local CPU cluster is tuned for this workload: one single-threaded worker process per
core; the glibc trim and mmap thresholds raised (Dask's default
``MALLOC_TRIM_THRESHOLD_=65536`` cost ~15% of extraction speed); the statistical profiler
off; the workers ignore Ctrl-C (the client stops them). Its dashboard listens on 127.0.0.1
only unless asked otherwise, and takes a free port when the default one is busy (the
printed link is the real one).

Library calls given no client (``extract_features(...)`` in a notebook) run on
:func:`session_client`: the notebook's own Dask client where there is one, else a local
cluster started on first use and kept for the Python session, so a second call starts no
processes and its workers' models are already built.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from cxrdask.errors import ClusterError

logger = logging.getLogger(__name__)

WORKER_ENVIRONMENT = {
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
DEFAULT_DASHBOARD = "127.0.0.1:8787"
DASHBOARD_MODULE = "distributed.dashboard.scheduler"  # Bokeh's pages of the scheduler
# Seconds a closing worker process gets before its nanny kills it: model teardown (torch,
# ONNX Runtime thread pools) can outlast Dask's default of a few seconds.
WORKER_CLOSE_TIMEOUT = 20


def cluster_config() -> dict:
    """Dask config for the clusters cxrdask starts (pass to ``dask.config.set``)."""
    return {
        "distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT,
        "distributed.worker.profile.enabled": False,
        # Workers ignore Ctrl-C; the client that started them stops them (cxrdask.runtime.interrupt).
        "distributed.worker.preload": ["cxrdask.extract.worker_setup"],
    }


def dashboard_address_for(address: str | None) -> str | None:
    """``address`` if its port is free (or is 0), else the same host with a free port.

    Dask itself falls back to a random port too, but with a warning ("Port 8787 is already
    in use") that reads like an error; checking first keeps the output clean.
    """
    if not address:
        return address
    host, _, port_text = address.rpartition(":")
    host = host or "127.0.0.1"
    port = int(port_text or 0)
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                port = 0
    return f"{host}:{port}"


def start_local_cluster(n_workers: int | None = None, threads_per_worker: int = 1,
                        dashboard_address: str | None = DEFAULT_DASHBOARD,
                        memory_limit: str | float | None = "auto") -> LocalCluster:
    """A local cluster of worker *processes*, one single-threaded worker per core by default.

    Everything listens on 127.0.0.1; pass ``dashboard_address="0.0.0.0:8787"`` to show the
    dashboard to other machines.

    Parameters
    ----------
    n_workers, threads_per_worker
        The layout (default: one single-threaded process per core).
    dashboard_address
        Where the dashboard listens (a busy port is replaced by a free one); None: none.
    memory_limit
        Per worker, as Dask takes it.

    Returns
    -------
    distributed.LocalCluster
    """
    n_workers = n_workers or os.cpu_count() or 1
    address = dashboard_address_for(dashboard_address)
    # The dashboard's modules (Bokeh: 0.8 s on one core) are imported while the worker
    # processes start, which keeps this process waiting anyway; see _add_dashboard_pages.
    dashboard_import = threading.Thread(target=importlib.import_module, args=(DASHBOARD_MODULE,),
                                        name="cxrdask-dashboard-import", daemon=True)
    if address:
        dashboard_import.start()
    with dask.config.set(cluster_config()):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=address,
            memory_limit=memory_limit,
            host="127.0.0.1",
            # The scheduler's HTTP server listens at once; its Bokeh pages are added once
            # the workers are started (below).
            scheduler_kwargs={"dashboard": False} if address else None,
        )
    if address:
        dashboard_import.join()
        cluster.sync(_add_dashboard_pages, cluster.scheduler)
    return cluster


async def _add_dashboard_pages(scheduler) -> None:
    """Add the Bokeh dashboard to the scheduler's HTTP server, as the scheduler does itself
    when it is built with ``dashboard=True``.

    Built there, the dashboard (importing Bokeh and its pages' modules: 0.8 s on one core)
    delays the start of the worker processes, while the machine's other cores are idle.
    Instead its modules are imported in a thread while the workers start, and the pages
    (0.06 s) are added once they have: the cluster is ready about 0.8 s sooner on 2 cores
    (1.0 against 1.8 s to start one worker). Runs on the scheduler's event loop.
    """
    from distributed.dashboard.scheduler import connect

    connect(scheduler.http_application, scheduler.http_server, scheduler, prefix="/")


def start_gpu_cluster(dashboard_address: str | None = DEFAULT_DASHBOARD, **kwargs) -> LocalCluster:
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
        return LocalCUDACluster(host="127.0.0.1",
                                dashboard_address=dashboard_address_for(dashboard_address),
                                **kwargs)


def close_cluster(cluster: LocalCluster) -> None:
    """Close a local cluster, giving its workers time to tear their models down first.

    Each nanny waits a few seconds for its worker process and then kills it with a warning
    ("Worker process still alive after 4.0 seconds, killing"); a worker that holds a model
    can take that long to exit, and the kill is harmless at that point, so the warning is
    kept out of the user's output.
    """
    nanny_logger = logging.getLogger("distributed.nanny")
    level = nanny_logger.level
    nanny_logger.setLevel(logging.ERROR)
    try:
        cluster.close(timeout=WORKER_CLOSE_TIMEOUT)
    finally:
        nanny_logger.setLevel(level)


def _layout_or_default(n_workers: int | None, threads_per_worker: int,
                       default_layout: tuple[int, int] | None) -> tuple[int | None, int]:
    """The layout asked for, or ``default_layout`` where none is (no ``n_workers`` and one
    thread each, the defaults)."""
    if n_workers is None and threads_per_worker == 1 and default_layout is not None:
        return default_layout
    return n_workers, threads_per_worker


@contextmanager
def local_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    gpu: bool = False,
    dashboard_address: str | None = DEFAULT_DASHBOARD,
    announce: bool = True,
    default_layout: tuple[int, int] | None = None,
) -> Iterator[Client]:
    """A client to ``scheduler`` if given, else to a new local (GPU) cluster closed afterwards.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``).
    n_workers, threads_per_worker
        The local cluster's layout (default: one single-threaded process per core).
    gpu
        A local dask-cuda cluster, one worker per GPU (the ``gpu`` extra).
    dashboard_address
        Where the dashboard listens; 127.0.0.1 only by default, a busy port is replaced by a
        free one. None: no dashboard.
    announce
        Print the dashboard link.
    default_layout
        ``(workers, threads each)`` of the local cluster when no layout is asked for (what
        suits the work, such as one process with a thread per core for ONNX Runtime); None:
        one single-threaded process per core.

    Yields
    ------
    distributed.Client

    Raises
    ------
    ClusterError
        The scheduler cannot be reached, or a GPU cluster cannot be started.
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
                cluster = start_local_cluster(
                    *_layout_or_default(n_workers, threads_per_worker, default_layout),
                    dashboard_address)
            client = Client(cluster)
        if announce:
            logger.info("Dask dashboard: %s", client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            close_cluster(cluster)


_SESSION: dict[str, tuple[tuple[int, int], LocalCluster, Client]] = {}
_SESSION_LOCK = threading.Lock()


def session_client(n_workers: int | None = None, threads_per_worker: int = 1,
                   announce: bool = True,
                   default_layout: tuple[int, int] | None = None) -> Client:
    """The client a library call given no client runs on.

    With no layout asked for, the current Dask client (``distributed.Client()`` made in a
    notebook, or a ``with Client(...)`` block), as Dask's own functions do. Otherwise, or
    when there is none, a local cluster (:func:`start_local_cluster`) of that layout,
    started on first use and kept for the Python session (the session's default Dask
    client while it lives): later calls start no processes and find their models built. A
    call asking for another layout replaces it.
    :func:`close_session_cluster` closes it; so does the interpreter's exit.

    Parameters
    ----------
    n_workers, threads_per_worker
        The local cluster's layout (default: one single-threaded process per core).
    announce
        Log the dashboard link (logger ``cxrdask``, level INFO) when a cluster is started.
    default_layout
        ``(workers, threads each)`` of a cluster started when no layout is asked for and
        there is no current client (what suits the caller's work, such as one process with
        a thread per core for ONNX Runtime); None: one single-threaded process per core.
    """
    from distributed import default_client

    if n_workers is None and threads_per_worker == 1:
        try:
            return default_client()
        except ValueError:  # no current client
            pass
    n_workers, threads_per_worker = _layout_or_default(n_workers, threads_per_worker,
                                                       default_layout)
    layout = (n_workers or os.cpu_count() or 1, threads_per_worker)
    with _SESSION_LOCK:
        held = _SESSION.get("local")
        if held is not None and (held[0] != layout or held[2].status != "running"):
            _close_session()
            held = None
        if held is None:
            cluster = start_local_cluster(*layout)
            client = Client(cluster)  # the default client, as a notebook's own Client() is
            if announce:
                logger.info("Dask dashboard: %s (kept for this Python session; "
                            "cxrdask.close_session_cluster() closes it)", client.dashboard_link)
            held = _SESSION["local"] = (layout, cluster, client)
        return held[2]


def close_session_cluster() -> None:
    """Close the local cluster :func:`session_client` keeps, if any (its worker processes
    and their models); the next call without a client starts a new one."""
    with _SESSION_LOCK:
        _close_session()


def _close_session() -> None:
    held = _SESSION.pop("local", None)
    if held is not None:
        _, cluster, client = held
        client.close()
        close_cluster(cluster)


atexit.register(close_session_cluster)


__all__ = ["DASHBOARD_MODULE", "DEFAULT_DASHBOARD", "WORKER_CLOSE_TIMEOUT", "WORKER_ENVIRONMENT",
           "close_cluster", "close_session_cluster", "cluster_config", "dashboard_address_for",
           "local_client", "session_client", "start_gpu_cluster", "start_local_cluster"]
