"""Ctrl-C on the command line: the first stops the job cleanly, a second exits at once.

The first Ctrl-C raises :class:`KeyboardInterrupt` as usual: an extraction then cancels its
outstanding tasks, releases the store's writer lease and closes its cluster (every finished
chunk is kept, and the same command resumes). That can take a few seconds; a user who does
not want to wait presses Ctrl-C again and the process exits at once with status 130 (the
store is still resumable: its lease names a process that no longer exists, which the next
run on this host takes over).

Only the command line installs this: a notebook's kernel keeps its own interrupt handling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


@contextlib.contextmanager
def second_interrupt_exits(command: str) -> Iterator[None]:
    """Within the block, the first SIGINT raises KeyboardInterrupt, the next exits at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    interrupted = False

    def on_interrupt(signum, frame) -> None:
        nonlocal interrupted
        if interrupted:
            print(f"\ncxrdask {command}: interrupted again: exiting now", file=sys.stderr,
                  flush=True)
            os._exit(EXIT_INTERRUPTED)
        interrupted = True
        print(f"\ncxrdask {command}: interrupted: cancelling outstanding work and releasing the "
              "store (press Ctrl-C again to exit at once)", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def end_process_now(status: int) -> None:
    """End this process with ``status`` once its work is done, without unloading its modules.

    What an ordinary exit adds after a cxrdask command or worker has finished is the
    interpreter unloading torch, the engines and ~1,500 other modules and joining idle I/O
    threads (0.7-0.9 s per process). Output is flushed and logging shut down first, so
    nothing printed is lost; a forked child ends the same way."""
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    logging.shutdown()
    os._exit(status)


__all__ = ["EXIT_INTERRUPTED", "end_process_now", "second_interrupt_exits"]
