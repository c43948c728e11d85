"""The sha256 a weights file is identified by in a store's provenance (a file can change
under the same name)."""

from __future__ import annotations

import hashlib

import fsspec

from cxrdask.errors import WeightsNotFoundError


def file_sha256(url: str) -> str:
    """sha256 of a weights file at any fsspec URL, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with fsspec.open(url, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"weights file not found: {url}") from exc
    return digest.hexdigest()


__all__ = ["file_sha256"]
