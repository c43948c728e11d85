"""Small fsspec helpers shared by the modules that read or write URLs."""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

StorageOptions = dict[str, Any]


def filesystem(url: str, storage_options: StorageOptions | None = None):
    """Return ``(fs, path)`` for any fsspec URL (a plain path means the local disk)."""
    return fsspec.core.url_to_fs(url, **with_defaults(url, storage_options))


def with_defaults(url: str, storage_options: StorageOptions | None = None) -> StorageOptions:
    """``storage_options`` with cxrdask's defaults for the URL's protocol (the user's win).

    S3: ``max_concurrency=1``. Everything cxrdask reads from a bucket is read whole and is
    small (an image, a zarr chunk); with s3fs's default of 10 every such read first asks
    for the object's size (a HEAD) to consider a parallel download, doubling the requests,
    and a chunk never written (zarr leaves out chunks that hold only the fill value) then
    costs a HEAD and a LIST instead of one GET answered 404. A store's ``table()`` at
    112,120 rows made ~4,000 requests instead of ~2,000.
    """
    options = dict(storage_options or {})
    if url.split("://", 1)[0] in ("s3", "s3a"):
        options.setdefault("max_concurrency", 1)
    return options


def is_local(fs) -> bool:
    """True for the local disk, where plain paths are the clearest URLs to hand out."""
    return isinstance(fs, LocalFileSystem)


def full_url(fs, path: str) -> str:
    """The URL a worker can open: the plain path on local disk, ``proto://path`` elsewhere."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join_url(root: str, *parts: str) -> str:
    """Join URL parts with ``/`` (fsspec URLs use forward slashes on every platform)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


__all__ = ["StorageOptions", "filesystem", "full_url", "is_local", "join_url", "with_defaults"]
