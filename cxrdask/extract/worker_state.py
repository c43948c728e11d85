"""A worker's resources for one extraction run, held by a Dask worker plugin.

Each run registers :class:`ExtractionWorkerPlugin` on the cluster before its first task
(:func:`cxrdask.extract.run.run_extraction`); registering it again for the next run tears
the previous run's state down (its I/O pool shut down, its store handles dropped), so a
store made again under the same URL is never read through a stale handle. A worker that
joins mid-run (a replacement for a killed one) gets the plugin from the scheduler.

What outlives a run on purpose is the backbone: its runner is cached per process by
:func:`cxrdask.backbones.runner.cached_runner`, so a session's next call starts warm.

Imported by the client (to register the plugin): no torch, no stores, no images here.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

PLUGIN_NAME = "cxrdask-extraction"


@dataclass(frozen=True)
class StoreKey:
    """One opened store: its kind, URL, storage options (as text) and mode."""

    kind: str
    url: str
    options: str
    mode: str


@dataclass
class WorkerState:
    """One run's resources in one worker process, shared by its task threads (under
    ``lock``): opened stores, the I/O thread pools, the uint8 -> model input converters, and
    the torch thread count set for the run."""

    stores: dict[StoreKey, Any] = field(default_factory=dict)
    pools: dict[int, ThreadPoolExecutor] = field(default_factory=dict)
    inputs: dict[tuple[str, Any], Any] = field(default_factory=dict)
    torch_threads: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pool(self, threads: int) -> ThreadPoolExecutor:
        """The run's I/O pool of ``threads`` threads (call under ``lock``)."""
        if threads not in self.pools:
            self.pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="cxrdask-io")
        return self.pools[threads]

    def close(self) -> None:
        """Shut the pools down (reads already queued finish) and drop the handles."""
        with self.lock:
            for pool in self.pools.values():
                pool.shutdown(wait=False)
            self.pools.clear()
            self.stores.clear()
            self.inputs.clear()


class ExtractionWorkerPlugin(WorkerPlugin):
    """Holds a :class:`WorkerState` from ``setup`` (registration, per run) to ``teardown``
    (the next run's registration, or the worker's close)."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.state: WorkerState | None = None

    def setup(self, worker: Any) -> None:
        self.state = WorkerState()

    def teardown(self, worker: Any) -> None:
        if self.state is not None:
            self.state.close()


# A task function called in this process rather than by a Dask worker (a test, a debugger).
_IN_PROCESS = WorkerState()


def worker_state() -> WorkerState:
    """The calling worker's state for the current run (outside a Dask worker, or on one the
    plugin never reached, a state of this process's own)."""
    from distributed import get_worker

    try:
        plugin = get_worker().plugins.get(PLUGIN_NAME)
    except ValueError:  # not on a worker
        return _IN_PROCESS
    state = getattr(plugin, "state", None)
    return state if isinstance(state, WorkerState) else _IN_PROCESS


__all__ = ["PLUGIN_NAME", "ExtractionWorkerPlugin", "StoreKey", "WorkerState", "worker_state"]
