"""Preloaded into the worker processes of the local clusters cxrdask starts.

Ctrl-C in a terminal reaches every process of the foreground job, the Dask workers
included; each then printed a ``KeyboardInterrupt`` traceback while the client was
cancelling the run. The workers ignore SIGINT instead: the client stops them when it
closes its cluster (see :mod:`cxrdask.interrupt`).
"""

from __future__ import annotations

import signal
import threading


def dask_setup(worker) -> None:
    """Dask's preload hook: runs in the worker process when it starts."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
