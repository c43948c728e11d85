"""Small fsspec helpers shared by the modules that read or write URLs."""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

StorageOptions = dict[str, Any]


def filesystem(url: str, storage_options: StorageOptions | None = None):
    """Return ``(fs, path)`` for any fsspec URL (a plain path means the local disk)."""
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def is_local(fs) -> bool:
    """True for the local disk, where plain paths are the clearest URLs to hand out."""
    return isinstance(fs, LocalFileSystem)


def full_url(fs, path: str) -> str:
    """The URL a worker can open: the plain path on local disk, ``proto://path`` elsewhere."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join_url(root: str, *parts: str) -> str:
    """Join URL parts with ``/`` (fsspec URLs use forward slashes on every platform)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
