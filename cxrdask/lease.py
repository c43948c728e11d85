"""A writer's lease on a feature store, so two extractions never write one store at once.

The lease is a small JSON object (``cxrdask.lease``) inside the store, renewed by the
running client every ``renew_seconds``. A second run finds a live lease and is refused with
a message naming its holder. A lease is stale, and taken over, once it has not been renewed
for ``timeout_seconds``, or at once when its holder was a process on this host that no
longer exists (a client killed with SIGKILL, then the same command run again, resumes).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from ._fs import StorageOptions, filesystem
from .errors import StoreLockedError

LEASE_NAME = "cxrdask.lease"
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    started: float
    renewed: float

    def alive(self, timeout: float, now: float) -> bool:
        if now - self.renewed > timeout:
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"process {self.pid} on {self.host}, started {started}, renewed "
                f"{time.time() - self.renewed:.0f} s ago")


class StoreLease:
    """Hold the writer lease of the store at ``url`` (a context manager)."""

    def __init__(self, url: str, storage_options: StorageOptions | None = None,
                 timeout_seconds: float = DEFAULT_TIMEOUT, renew_seconds: float | None = None):
        self.url = url
        self.fs, base = filesystem(url, storage_options)
        self.path = f"{base.rstrip('/')}/{LEASE_NAME}"
        self.timeout = timeout_seconds
        self.renew_every = renew_seconds or timeout_seconds / 4
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> Holder | None:
        """The current holder, or None where there is no (readable) lease."""
        try:
            return Holder(**json.loads(self.fs.cat_file(self.path)))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _write(self) -> None:
        record = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                  "started": self.started, "renewed": time.time()}
        self.fs.pipe_file(self.path, json.dumps(record).encode())

    def acquire(self) -> StoreLease:
        """Take the lease (or renew our own); refuse if another live run holds it."""
        holder = self.holder()
        if holder is not None and holder.token != self.token \
                and holder.alive(self.timeout, time.time()):
            raise StoreLockedError(
                f"feature store {self.url} is being written by another run ({holder.describe()}); "
                f"wait for it to finish, or, if it died on another machine, for its lease to "
                f"expire ({self.timeout:.0f} s without renewal)")
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        self._write()
        time.sleep(0.05)  # two runs that raced on the write: the last writer wins, the other backs off
        winner = self.holder()
        if winner is None or winner.token != self.token:
            raise StoreLockedError(f"feature store {self.url} was taken by another run just now")
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew, name="cxrdask-lease", daemon=True)
            self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            # A renewal that fails is retried; the lease only expires after the timeout.
            with contextlib.suppress(OSError):
                self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.holder()
        if holder is not None and holder.token == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)

    def __enter__(self) -> StoreLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
