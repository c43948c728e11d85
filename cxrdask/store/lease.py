"""A writer's lease on a feature store, so two extractions never write one store at once.

The lease is a small JSON object (``cxrdask.lease``) inside the store, made with an
exclusive create (``O_EXCL`` on disk, ``If-None-Match: *`` on S3 through s3fs), so of two
runs that start together exactly one gets it; the running client renews it every
``renew_seconds``. A second run finds a live lease and is refused with a message naming
its holder. A lease is stale, and taken over, once it has not been renewed for
``timeout_seconds``, or at once when its holder was a process on this host that no longer
exists (a client killed with SIGKILL, then the same command run again, resumes).

The lease's token is also a fencing token: every chunk task checks that the store's lease
still holds its run's token before it writes (:func:`check_lease`), so a run whose lease
was taken over (it stalled past the timeout) cannot write into the new run's store.
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

from cxrdask._fs import StorageOptions, filesystem
from cxrdask.errors import StoreLockedError

LEASE_NAME = "cxrdask.lease"  # the file name is part of the store format: keep it
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
        self.fs.pipe_file(self.path, self._record())

    def _record(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "started": self.started, "renewed": time.time()}).encode()

    def _create(self) -> None:
        """Create the lease file only if there is none (FileExistsError otherwise)."""
        with self.fs.open(self.path, "xb") as handle:
            handle.write(self._record())

    def acquire(self) -> StoreLease:
        """Take the lease (or renew our own); refuse if another live run holds it."""
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        for _ in range(5):
            try:
                self._create()
                break
            except FileExistsError:
                holder = self.holder()
                if holder is None:  # being written this instant, or unreadable: look again
                    time.sleep(0.05)
                    continue
                if holder.token == self.token:
                    self._write()
                    break
                if holder.alive(self.timeout, time.time()):
                    raise StoreLockedError(
                        f"store {self.url} is being written by another run ({holder.describe()}); "
                        f"wait for it to finish, or, if it died on another machine, for its "
                        f"lease to expire ({self.timeout:.0f} s without renewal)") from None
                # Stale: remove it and race for the exclusive create; one racer wins.
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path)
        else:
            raise StoreLockedError(f"store {self.url} was taken by another run just now")
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew, name="cxrdask-lease", daemon=True)
            self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_every):
            # A renewal that fails is retried; the lease only expires after the timeout.
            # A lease another run has taken over is never written back: its chunk tasks'
            # fencing checks then refuse to write.
            with contextlib.suppress(OSError):
                holder = self.holder()
                if holder is not None and holder.token != self.token:
                    return
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


def check_lease(url: str, token: str, storage_options: StorageOptions | None = None) -> None:
    """Refuse (:class:`~cxrdask.errors.StoreLockedError`) when the store's lease is no longer
    held by ``token``: a chunk task calls this before it writes (the fencing check)."""
    lease = StoreLease(url, storage_options)
    holder = lease.holder()
    if holder is None or holder.token != token:
        now = f"now held by {holder.describe()}" if holder else "no longer held"
        raise StoreLockedError(f"the lease of {url} is {now}: this run lost it (it stalled past "
                               "the lease's timeout?), so its chunk is not written")


__all__ = ["DEFAULT_TIMEOUT", "LEASE_NAME", "Holder", "StoreLease", "check_lease"]
