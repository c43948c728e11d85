"""Which rows of one store are images of other stores, as training and evaluation ask it:
one head trained on several stores learns each image once (a later store's copies of an
earlier store's images are left out), and a score on a store is external only for the rows
the head did not train on (:mod:`cxrdask.evaluation.external`).

The search is :mod:`cxrdask.store.overlap`'s, exact, below :data:`EXACT_PAIRS` pairs of rows;
above, a sample screens first (:func:`copies_in`). Every answer is kept in the cache folder
under both stores' identities, so the next head or report on the same stores does not
search again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdask._fs import StorageOptions, filesystem
from cxrdask.runtime.cache import cache_root
from cxrdask.store.features import STATUS_OK, FeatureStore, open_store
from cxrdask.store.overlap import (
    CANDIDATE_CORRELATION,
    DEFAULT_THRESHOLD,
    OverlapUncheckable,
    check_comparable,
    check_signatures,
    find_overlap,
    matching_pairs,
    signature_blocks,
    signatures_of,
)


@dataclass(frozen=True)
class Copies:
    """The rows of one store whose images are images of other stores (:func:`copies_in`).

    Attributes
    ----------
    found : dict of str to numpy.ndarray
        Per other store (by URL), this store's rows that are its images.
    checked : bool
        Every other store was compared with this one.
    reason : str
        Why not (empty where it was).
    screened : tuple of str
        The other stores too large to compare row by row with this one (above
        :data:`EXACT_PAIRS` pairs of rows) whose images none of :data:`SCREEN_ROWS` random
        rows of this one was: judged to share none (see :func:`copies_in`).
    """

    found: dict[str, np.ndarray]
    checked: bool = True
    reason: str = ""
    screened: tuple[str, ...] = ()

    @property
    def rows(self) -> np.ndarray:
        """This store's rows that are images of any of the others (left out of training: the
        image trains once, through its first store's copy and in that store's split)."""
        if not self.found:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate(list(self.found.values()))).astype(np.int64)

    @property
    def per_store(self) -> dict[str, int]:
        """How many of this store's rows are images of each other store."""
        return {url: int(np.unique(rows).size) for url, rows in self.found.items()}

    def to_json(self) -> dict:
        return {"checked": self.checked, "rows_left_out": len(self.rows),
                "per_earlier_store": self.per_store, "reason": self.reason or None,
                "screened_by_sample": list(self.screened)}


EXACT_PAIRS = 10**9  # rows x rows compared exactly (about 13 s on 2 cores)
SCREEN_ROWS = 2_000  # beyond, this many random rows are searched first


def copies_in(store: FeatureStore | str, others, *, threshold: float = DEFAULT_THRESHOLD,
              storage_options: StorageOptions | None = None) -> Copies:
    """The rows of ``store`` that are images of each of ``others`` (stores or URLs), by
    :func:`find_overlap`; its errors (a store without signatures, one that cannot be
    opened) are the caller's to turn into an unchecked answer.

    The exact search costs the product of the two stores' rows: at a million rows across
    archives (NIH, CheXpert and MIMIC together) the three pairs of stores are 3 x 10^11 pairs
    of rows, an hour on 2 cores, for archives that share no image. So where a pair of stores is above
    :data:`EXACT_PAIRS`, :data:`SCREEN_ROWS` random rows of ``store`` are searched first:
    if none is a copy, the stores are judged to share none (were 0.15 % of its rows copies,
    a sample this size would find one 95 times in 100) and the other store is listed in
    ``screened``; if any is, the whole store is searched exactly, as below the limit (RSNA
    Pneumonia's images are all NIH's: found by the sample, then every copy by the search).
    """
    store = open_store(store, storage_options)
    found, screened = {}, []
    for other in others:
        other = open_store(other, storage_options)
        found[other.url], by_sample = _copies_between(store, other, threshold)
        if by_sample:
            screened.append(other.url)
    return Copies(found, screened=tuple(screened))


def _copies_between(store: FeatureStore, other: FeatureStore, threshold: float
                    ) -> tuple[np.ndarray, bool]:
    """The rows of ``store`` that are images of ``other``, and whether a sample judged
    there are none (:func:`copies_in`). Kept in the cache folder
    (:func:`~cxrdask.runtime.cache.cache_root`, ``copies/``) under both stores' identities
    (:func:`_identity`): every head trained and every report scored
    on the same stores asks again, and a million rows' search is minutes."""
    path = _copies_cache_path(store, other, threshold)
    try:
        with np.load(path) as kept:
            return kept["rows"], bool(kept["screened"])
    except (OSError, KeyError, ValueError):
        pass
    if store.n_rows * other.n_rows > EXACT_PAIRS and not _sample_has_copies(store, other, threshold):
        rows, by_sample = np.zeros(0, np.int64), True
    else:
        rows = find_overlap(other, store, threshold=threshold)["b_row"].to_numpy().astype(np.int64)
        by_sample = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, rows=rows, screened=by_sample)
        os.replace(partial, path)
    except OSError:  # a read-only home: the answer is still right, only not kept
        pass
    return rows, by_sample


def _copies_cache_path(store: FeatureStore, other: FeatureStore, threshold: float) -> Path:
    key = json.dumps([_identity(store), _identity(other), threshold, EXACT_PAIRS, SCREEN_ROWS,
                      CANDIDATE_CORRELATION])
    return cache_root() / "copies" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"


def _sample_has_copies(store: FeatureStore, other: FeatureStore, threshold: float) -> bool:
    """Whether any of :data:`SCREEN_ROWS` random readable rows of ``store`` (seeded: the
    same rows every time) is an image of ``other``, ``other`` read a block at a time."""
    check_signatures(store)
    check_signatures(other)
    check_comparable(other, store)
    readable = np.flatnonzero(store.read("status") == STATUS_OK)
    rows = np.sort(np.random.default_rng(0).choice(
        readable, min(SCREEN_ROWS, len(readable)), replace=False))
    sample = signatures_of(rows, *(np.asarray(store.array(name).get_orthogonal_selection(
        (rows, slice(None), slice(None)))) for name in ("thumbnail", "detail")))
    return any(len(matching_pairs(sample, block, threshold, same=False)[0])
               for block in signature_blocks(other))


def copies_of_earlier(stores: list[FeatureStore], k: int, *,
                      threshold: float = DEFAULT_THRESHOLD) -> Copies:
    """The rows of ``stores[k]`` that are images of ``stores[:k]``: one head trained on several
    stores keeps an image and its copies in one split by leaving out every later copy (RSNA
    Pneumonia's images are NIH's: listed after NIH, an RSNA store gives only its own). A
    store without signatures cannot be checked: ``checked`` False and the reason, nothing
    left out."""
    try:
        return copies_in(stores[k], stores[:k], threshold=threshold)
    except OverlapUncheckable as exc:
        return Copies({}, False, str(exc).splitlines()[0])


def copies_phrase(record: dict | None) -> str:
    """What a checkpoint's store record says of its copies, as a phrase for ``info`` and
    the training summary ("" for a store trained alone or the first of several)."""
    if not record:
        return ""
    if not record["checked"]:
        return f"; copies of earlier stores' images not checked ({record['reason']})"
    screened = len(record.get("screened_by_sample") or ())
    sampled = (f" ({screened} earlier store(s) too large to compare row by row: none of "
               f"{SCREEN_ROWS:,} random rows was a copy)") if screened else ""
    if not record["rows_left_out"]:
        return f"; no copies of earlier stores' images{sampled}" if record["per_earlier_store"] else ""
    return f"; {record['rows_left_out']:,} copies of earlier stores' images left out{sampled}"


def _identity(store: FeatureStore) -> list:
    """What changes when a store's signatures may have: where it is, when it was made, its
    rows and chunks done, and when its group's metadata was last written (at every run's
    end; an mtime on disk, LastModified or an ETag on object storage)."""
    fs, path = filesystem(store.url, store.storage_options)
    info = fs.info(f"{path.rstrip('/')}/zarr.json")
    written = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
    return [store.url, store.provenance.get("created"), store.n_rows,
            int(store.done_chunks().sum()), str(written)]


__all__ = ["EXACT_PAIRS", "SCREEN_ROWS", "Copies", "copies_in", "copies_of_earlier",
           "copies_phrase"]
