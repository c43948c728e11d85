"""Preloaded into the worker processes of the local clusters cxrdask starts.

Ctrl-C in a terminal reaches every process of the foreground job, the Dask workers
included; each then printed a ``KeyboardInterrupt`` traceback while the client was
cancelling the run. The workers ignore SIGINT instead: the client stops them when it
closes its cluster (see :mod:`cxrdask.interrupt`).

Every cxrdask task on these workers needs torch, and importing it (with the extraction's
worker code) is most of a cold start: 2 s on one core. A background
thread starts that import as the worker process starts, so it runs while the worker
registers, the client creates the store and submits the first tasks; the first task then
finds the modules imported, or waits only for the rest of the import.
"""

from __future__ import annotations

import importlib
import signal
import threading

#: What the background import loads: the extraction's worker side and torch.
WORKER_MODULES = ("cxrdask.extract_worker",)


def dask_setup(worker) -> None:
    """Dask's preload hook: runs in the worker process when it starts."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_import_worker_modules, name="cxrdask-preimport", daemon=True).start()


def _import_worker_modules() -> None:
    for module in WORKER_MODULES:
        try:
            importlib.import_module(module)
        except Exception:  # the task that needs it imports it again and reports why
            return
