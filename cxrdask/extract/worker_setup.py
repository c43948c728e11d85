"""Preloaded into the worker processes of the local clusters cxrdask starts.

Ctrl-C in a terminal reaches every process of the foreground job, the Dask workers
included; each then printed a ``KeyboardInterrupt`` traceback while the client was
cancelling the run. The workers ignore SIGINT instead: the client stops them when it
closes its cluster (see :mod:`cxrdask.runtime.interrupt`).

A worker's first task needs the extraction's worker side, and where its backbone runs on
PyTorch, torch: importing it is most of a cold start (2-3 s on one core). A background
thread starts those imports as the worker process starts, so they run while the worker
registers, the client creates the store and submits the first tasks; the first task then
finds the modules imported, or waits only for the rest of the import.

torch is left out where ``engine="auto"`` will run ONNX Runtime on this machine (an fp32
CPU, :func:`~cxrdask.extract.resolve.local_engine`) and an ONNX export is cached here already:
such a worker never needs torch (its input is normalised with NumPy), and importing it
anyway would take a core from the first chunk. On a machine's first ONNX Runtime job
(nothing cached) the export needs torch, so it is imported as for PyTorch. A task that
needs torch where it was left out (``engine="torch"``, training) imports it itself.

A worker process whose worker has closed leaves at once (:func:`leave_when_closed`): what
remains then is the interpreter unloading torch and the engines, about 0.9 s that every
cluster close, and so every command-line run, waited for.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import signal
import threading

#: What the background import loads: the extraction's worker side (torch-free)...
WORKER_MODULES = ("cxrdask.extract.worker",)
#: ... and where the default engine is PyTorch, torch with the backbone and its input.
TORCH_MODULES = ("cxrdask.backbones.runner", "cxrdask.imaging.model_input")


class CancelledOnPurpose(logging.Filter):
    """Drops distributed's warning that a task "ended with CancelledError": the client
    cancels a run's remaining tasks on purpose (a ``strict`` stop, an error, Ctrl-C), and a
    user read the warning, one per running task, as a second failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ended with CancelledError" not in record.getMessage()


class FencedByItsLease(logging.Filter):
    """Drops distributed's "Compute Failed" error, with its traceback, for a chunk task that
    its lease check refused (:class:`~cxrdask.errors.StoreLockedError`).

    That refusal is the fence working, not a second failure: after a ``strict`` stop or an
    error the client cancels the run and releases its lease, and a chunk already running
    then refuses to write (the cancel had not reached its worker yet). Where a run really
    lost its lease, the client gets the same error from the task's result and reports it
    in one line; the worker's copy was a traceback in the middle of the user's terminal.
    Other tasks' failures are logged as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("Compute Failed")):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, str) and arg.startswith("StoreLockedError(")
                       for arg in args)


def dask_setup(worker) -> None:
    """Dask's preload hook: runs in the worker process when it starts."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker.state_machine").addFilter(CancelledOnPurpose())
    logging.getLogger("distributed.worker").addFilter(FencedByItsLease())
    threading.Thread(target=_import_worker_modules, name="cxrdask-preimport", daemon=True).start()
    atexit.register(leave_when_closed, worker)


def leave_when_closed(worker) -> None:
    """At the worker process's exit, once its worker has closed (its tasks done, its results
    sent, the nanny told): end the process now, as a forked child does (``os._exit``),
    instead of unloading every module. A process whose worker did not close cleanly exits
    1, as it would have. Registered before torch is imported, so it runs after torch's own
    exit handlers (they run last-registered first)."""
    from distributed.core import Status

    from cxrdask.runtime.interrupt import end_process_now

    end_process_now(0 if worker.status in (Status.closed, Status.closing) else 1)


def preimported_modules() -> tuple[str, ...]:
    """The modules a starting worker imports in the background (see the module's docstring)."""
    from cxrdask.backbones.engines import ENGINE_RULES
    from cxrdask.backbones.engines.onnxruntime import onnx_cache_dir
    from cxrdask.config import ExtractConfig
    from cxrdask.extract.resolve import local_engine

    needs_torch = (ENGINE_RULES[local_engine(ExtractConfig())].takes_torch
                   or not any(onnx_cache_dir().glob("*.onnx")))  # it will export
    return WORKER_MODULES + (TORCH_MODULES if needs_torch else ())


def _import_worker_modules() -> None:
    for module in preimported_modules():
        try:
            importlib.import_module(module)
        except Exception:  # the task that needs it imports it again and reports why
            return


__all__ = [
    "TORCH_MODULES",
    "WORKER_MODULES",
    "CancelledOnPurpose",
    "FencedByItsLease",
    "dask_setup",
    "leave_when_closed",
    "preimported_modules",
]
