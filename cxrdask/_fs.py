"""Small fsspec helpers shared by the modules that read or write URLs."""

from __future__ import annotations

import os
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


def find_files(fs, path: str) -> list[str]:
    """Every file below ``path``, sorted, as ``fs.find(path)`` lists them.

    On the local disk the tree is walked with :func:`os.walk` instead: fsspec's local
    ``find`` asks for every file's ``stat`` (7 of the 9 s a listing of a million images
    took on 2 cores, for sizes nothing here reads), and it lists a link to a folder as a
    file, so the images of an ``images/`` folder linked to another disk were all missing.
    The walk follows such links, each folder once: a link back up the tree (a loop) or a
    second link to a folder already listed is not walked again. Elsewhere (S3, GCS, ...)
    it is ``fs.find``: one listing request a thousand objects.
    """
    if not is_local(fs):
        return fs.find(path)
    path = fs._strip_protocol(path)
    if os.path.isfile(path):
        return [path]
    found: list[str] = []
    walked: set[tuple[int, int]] = set()
    for folder, folders, names in os.walk(path, followlinks=True):
        identity = os.stat(folder)
        if (identity.st_dev, identity.st_ino) in walked:
            folders[:] = []  # reached again through a link: its files are listed already
            continue
        walked.add((identity.st_dev, identity.st_ino))
        found.extend(f"{folder}/{name}" if folder != "/" else f"/{name}" for name in names)
    found.sort()
    return found


def join_url(root: str, *parts: str) -> str:
    """Join URL parts with ``/`` (fsspec URLs use forward slashes on every platform)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


__all__ = ["StorageOptions", "filesystem", "find_files", "full_url", "is_local", "join_url", "with_defaults"]
