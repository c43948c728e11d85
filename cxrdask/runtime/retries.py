"""Storage failures that pass, told from those that do not, and retried with backoff.

A connection reset, a timeout or a 5xx from object storage says nothing about the image;
a missing file or a denied read does. Reads are retried (with tenacity) only for the
first kind; an image still unreadable after the last attempt is *retriable*, not failed:
its chunk is not marked done, the run ends with a non-zero status, and the next run reads
it again. Nothing is lost to a flaky network.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")

# Exception classes (by name, so botocore and aiohttp need not be imported) that mean the
# storage or the network failed for now, not the object.
TRANSIENT_NAMES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ResponseStreamingError", "IncompleteReadError", "ClientConnectionError",
    "ServerDisconnectedError", "ClientPayloadError", "ServerTimeoutError",
    "ClientConnectorError", "IncompleteRead", "ProtocolError", "RemoteDisconnected",
})
# Words of a storage error's message that mean the same (HTTP 5xx, S3's throttling).
TRANSIENT_WORDS = ("503", "502", "500", "504", "Service Unavailable", "SlowDown", "InternalError",
                   "Internal Server Error", "RequestTimeout", "Bad Gateway", "Gateway Timeout",
                   "Connection reset", "Connection refused", "timed out")
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# errno values storage libraries give passing failures (s3fs: SlowDown is EBUSY).
TRANSIENT_ERRNOS = frozenset({errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                              errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
                              errno.ENETUNREACH, errno.EHOSTUNREACH})
FIRST_WAIT_S = 0.2
MAX_WAIT_S = 5.0


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a storage failure worth trying again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PERMANENT):
            return False
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return True
        if TRANSIENT_NAMES & {cls.__name__ for cls in type(current).__mro__}:
            return True
        if any(word in str(current) for word in TRANSIENT_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def call_with_retries(function: Callable[[], T], retries: int,
                      first_wait_s: float = FIRST_WAIT_S, max_wait_s: float = MAX_WAIT_S) -> T:
    """``function()``, tried again up to ``retries`` times while it raises a transient error
    (exponential backoff with jitter); the last error is raised as it was."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential_jitter(multiplier=first_wait_s, max=max_wait_s),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
    )
    return retrying(function)


__all__ = ["call_with_retries", "is_transient"]
