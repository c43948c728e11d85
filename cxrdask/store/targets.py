"""Where a command may write: checked before anything is written, so nothing else is lost.

A store is a folder of its own. Pointing ``--store`` (or ``--pixels``, ``cache --store``,
``train --out``, ``evaluate --out``) at the image archive, at a folder inside it or around
it, at a file, or at a folder that holds other files is a mistake a user makes once: before
these checks, ``--overwrite`` on such a folder deleted every file in it (zarr's ``mode="w"``
clears the whole folder). Each check here raises :class:`~cxrdask.errors.WriteTargetError`
naming both paths, and :func:`clear_store` removes only a store's own entries.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from typing import Literal

from cxrdask._fs import StorageOptions, filesystem, is_local
from cxrdask.errors import WriteTargetError
from cxrdask.store.lease import LEASE_NAME

StoreKind = Literal["features", "pixels"]
# What a store folder holds of its own: its group metadata, its arrays and the writer's lease.
_COMMON_ENTRIES = frozenset({"zarr.json", LEASE_NAME, "status", "error", "done", "image", "finding",
                             "image_index", "patient_id", "follow_up", "age", "sex", "view",
                             "labels", "split"})
STORE_ENTRIES: dict[str, frozenset[str]] = {
    "features": _COMMON_ENTRIES | {"features", "thumbnail", "detail"},
    "pixels": _COMMON_ENTRIES | {"pixels"},
}
_SHOWN = 3  # entries named in an error


def _location(url: str, storage_options: StorageOptions | None) -> tuple[str, str]:
    """``(protocol, normalised path)``: local paths with links resolved, so two spellings of
    one folder compare equal."""
    fs, path = filesystem(url, storage_options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if is_local(fs):
        return "file", os.path.realpath(path)
    return protocol, posixpath.normpath("/" + path.strip("/"))


def overlap(a: str, b: str, storage_options: StorageOptions | None = None
            ) -> Literal["is", "inside", "contains"] | None:
    """How location ``a`` lies against ``b``: the same, inside it, containing it, or apart."""
    (proto_a, path_a), (proto_b, path_b) = (_location(a, storage_options),
                                            _location(b, storage_options))
    if proto_a != proto_b:
        return None
    if path_a == path_b:
        return "is"
    if path_a.startswith(path_b.rstrip("/") + "/"):
        return "inside"
    if path_b.startswith(path_a.rstrip("/") + "/"):
        return "contains"
    return None


def check_apart(target: str, what: str, inputs: Mapping[str, str | None],
                storage_options: StorageOptions | None = None) -> None:
    """Refuse a ``target`` that is, lies inside or contains one of ``inputs`` (name -> URL)."""
    for name, url in inputs.items():
        if not url:
            continue
        relation = overlap(target, url, storage_options)
        if relation is None:
            continue
        where = {"is": "is", "inside": "lies inside", "contains": "contains"}[relation]
        raise WriteTargetError(
            f"{what} {target} {where} {name} {url}: write to a folder of its own, outside it "
            "(nothing was written)")


def check_store_target(url: str, kind: StoreKind, *, what: str = "the store",
                       inputs: Mapping[str, str | None] | None = None,
                       storage_options: StorageOptions | None = None) -> None:
    """Refuse to make or overwrite a ``kind`` store at ``url`` where that could harm anything.

    Refused: ``url`` is, lies inside or contains one of ``inputs`` (the images folder, the
    metadata CSV, a pixel store read, the other store written); ``url`` is a file; ``url``
    is a cxrdask store of the other kind; ``url`` is a folder holding entries that are not a
    ``kind`` store's own (a half-made store, or a stale lease alone, is the store's own).
    Allowed: nothing there, an empty folder, a ``kind`` store (resumed or overwritten).

    Raises
    ------
    WriteTargetError
        Naming the folder, what is there (a few entries), and what to do.
    """
    check_apart(url, what, inputs or {}, storage_options)
    fs, path = filesystem(url, storage_options)
    path = path.rstrip("/")
    if not fs.exists(path):
        return
    if not fs.isdir(path):
        raise WriteTargetError(f"{what} {url} is a file, not a folder: name a new folder "
                               "(nothing was written)")
    found = store_kind(url, storage_options)
    if found is not None and found != kind:
        raise WriteTargetError(f"{what} {url} is a cxrdask {found} store, not a {kind} store: "
                               "it is never overwritten by another kind; name a new folder")
    entries = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    foreign = [name for name in entries if name not in STORE_ENTRIES[kind]]
    if foreign:
        shown = ", ".join(foreign[:_SHOWN]) + (f", ... ({len(foreign)} in all)"
                                               if len(foreign) > _SHOWN else "")
        state = "a cxrdask store that also holds" if found else "not a cxrdask store; it holds"
        raise WriteTargetError(
            f"{what} {url} is {state} other files ({shown}): a store must be a folder of its "
            "own; name a new or empty folder (nothing was written or deleted)")


def store_kind(url: str, storage_options: StorageOptions | None = None) -> str | None:
    """``features`` or ``pixels`` for a cxrdask store at ``url``; None for anything else.
    Reads the group's ``zarr.json`` alone (no zarr, no consolidated metadata parsed twice)."""
    fs, path = filesystem(url, storage_options)
    try:
        group = json.loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))
    except (FileNotFoundError, IsADirectoryError, ValueError):
        return None
    attributes = group.get("attributes", {}) if isinstance(group, dict) else {}
    provenance = attributes.get("cxrdask") if isinstance(attributes, dict) else None
    if not isinstance(provenance, dict):
        return None
    return str(provenance.get("kind", "features"))


def clear_store(url: str, kind: StoreKind, storage_options: StorageOptions | None = None) -> None:
    """Remove a ``kind`` store's own entries at ``url`` (its arrays and metadata; the writer's
    lease is kept: the run overwriting it holds it). Other files are never touched:
    :func:`check_store_target` refuses a folder holding any, and they are left where they are."""
    fs, path = filesystem(url, storage_options)
    path = path.rstrip("/")
    if not fs.exists(path):
        return
    for entry in fs.ls(path, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name in STORE_ENTRIES[kind] and name != LEASE_NAME:
            fs.rm(entry, recursive=True)


def check_output_folder(out: str, what: str, inputs: Mapping[str, str | None]) -> None:
    """Refuse an output folder (``train --out``, ``evaluate --out``) that is a file, or is,
    lies inside or contains one of ``inputs``; the files written there replace only
    their own names."""
    check_apart(out, what, inputs)
    if os.path.exists(out) and not os.path.isdir(out):
        raise WriteTargetError(f"{what} {out} is a file, not a folder: name a folder "
                               "(nothing was written)")


__all__ = ["STORE_ENTRIES", "check_apart", "check_output_folder", "check_store_target",
           "clear_store", "overlap", "store_kind"]
