"""Images of one store that are images of another (or repeats within one store), found by
their pixels: RSNA Pneumonia's images are NIH ChestX-ray14's, re-encoded as JPEG-in-DICOM,
and a head trained on NIH scored on RSNA would be scored partly on images it trained on.

Every feature store keeps two 32 x 32 signatures of each image, made from the model's input
by the extraction that read it (:func:`~cxrdask.imaging.decode.signatures`): its thumbnail
(its shape) and its detail (its fine texture, sampled on a grid). Two images are proposed
as one when their thumbnails, each standardised, correlate at ``CANDIDATE_CORRELATION``
(0.995) or more, and confirmed when their details correlate at ``threshold`` (0.9) or more.
Measured at NIH x RSNA size on synthetic radiographs at a 224-pixel input
(``benchmarks/bench_overlap.py``): a copy, re-encoded at JPEG quality 90 and rescaled,
keeps both (thumbnail 0.9999 or more, detail 0.93 or more, 0.97 typically); two
acquisitions of one patient can share a shape (thumbnails up to 1.0) but do not line up
their texture (detail 0.85 at most); two patients' images differ in shape (the closest,
0.98, with details at 0.91, are turned away by their thumbnails). The search is
exact: every pair's thumbnails are compared, by blocks of a matrix product in float32 (the
BLAS NumPy ships does it at the machine's speed), so nothing is missed for want of an
index's recall. Between two stores the smaller one's signatures are held and the larger's
read a block at a time: a million rows searched against RSNA's 26,684 hold one block of the
million, not the million.

Stores made before the signatures were kept cannot be searched: :func:`find_overlap` says so
(:class:`OverlapUncheckable`) rather than guess. ``cxrdask overlap`` runs it; evaluation
leaves out the rows of a store that are images a head trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions, filesystem
from cxrdask.errors import CxrDaskError
from cxrdask.runtime.cache import cache_root
from cxrdask.store.features import STATUS_OK, FeatureStore, open_store

DEFAULT_THRESHOLD = 0.9  # the details' correlation that confirms a pair
CANDIDATE_CORRELATION = 0.995  # the thumbnails' correlation that proposes one
BLOCK_ROWS = 4096  # at most this many rows of the first store compared at once
BLOCK_VALUES = 64 * 2**20  # and at most this many products held (256 MB of float32)


class OverlapUncheckable(CxrDaskError):
    """A store keeps no signatures (made before they were kept): overlap cannot be checked."""


@dataclass(frozen=True)
class Signatures:
    """A store's readable rows with signatures, each standardised to a unit vector of mean 0
    (a dot product is then a correlation): ``thumbnails`` and ``details`` (rows x 1024,
    float32), and the store ``rows`` they are."""

    rows: np.ndarray
    thumbnails: np.ndarray
    details: np.ndarray


def _unit(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows less their mean, over their norm; and which rows were not flat (norm > 0)."""
    values = values.astype(np.float32)
    values -= values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(values, axis=1)
    kept = norms > 1e-3
    values[kept] /= norms[kept, None]
    return values, kept


def _check_signatures(store: FeatureStore) -> None:
    if not store.has_thumbnails:
        raise OverlapUncheckable(
            f"{store.url} keeps no thumbnails (it was made before cxrdask kept image "
            "signatures): its overlap with other stores cannot be checked; extract it again "
            "(--overwrite) to check it")


def signature_blocks(store: FeatureStore, block_rows: int = BLOCK_ROWS) -> Iterator[Signatures]:
    """The store's signatures of readable rows, standardised, a block of whole chunks (about
    ``block_rows`` rows) at a time: what a search streams, so that only one block of the
    larger store is in memory. A row whose thumbnail or detail is flat (none kept: a failed
    image, a store made without images) is left out."""
    _check_signatures(store)
    readable = np.flatnonzero(store.read("status") == STATUS_OK)
    thumbs, details = store.array("thumbnail"), store.array("detail")
    width = thumbs.shape[1] * thumbs.shape[2]
    step = max(1, block_rows // store.chunk_rows) * store.chunk_rows
    for start in range(0, store.n_rows, step):
        stop = min(start + step, store.n_rows)
        chosen = readable[(readable >= start) & (readable < stop)]
        if len(chosen) == 0:
            continue
        shape, flat_shape = _unit(np.asarray(thumbs[start:stop]).reshape(-1, width)[chosen - start])
        texture, flat_texture = _unit(np.asarray(details[start:stop]).reshape(-1, width)[chosen - start])
        kept = flat_shape & flat_texture
        yield Signatures(chosen[kept], shape[kept], texture[kept])


def standardised_signatures(store: FeatureStore) -> Signatures:
    """Every block of :func:`signature_blocks` at once (the within-store search needs them
    all)."""
    _check_signatures(store)
    blocks = list(signature_blocks(store))
    if not blocks:
        width = store.array("thumbnail").shape[1] * store.array("thumbnail").shape[2]
        empty = np.zeros((0, width), np.float32)
        return Signatures(np.zeros(0, np.int64), empty, empty)
    return Signatures(*(np.concatenate(part) for part in zip(
        *((b.rows, b.thumbnails, b.details) for b in blocks), strict=True)))


def _streamed_matches(first: FeatureStore, second: FeatureStore, threshold: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair between two stores: the smaller store's signatures held, the larger's
    streamed a block at a time (memory is the smaller store, whatever the larger's size)."""
    flipped = first.n_rows > second.n_rows  # stream the larger one
    held = standardised_signatures(first if flipped else second)
    found = []
    for block in signature_blocks(second if flipped else first):
        rows_streamed, rows_held, shape, texture = _matches(block, held, threshold, same=False)
        found.append((rows_held, rows_streamed, shape, texture) if flipped
                     else (rows_streamed, rows_held, shape, texture))
    if not found:
        return _no_pairs()
    rows_a, rows_b, shape, texture = (np.concatenate(part) for part in zip(*found, strict=True))
    return rows_a, rows_b, shape, texture


def _identity(store: FeatureStore) -> list:
    """What changes when a store's signatures may have: where it is, when it was made, its
    rows and chunks done, and when its group's metadata was last written (at every run's
    end; an mtime on disk, LastModified or an ETag on object storage)."""
    fs, path = filesystem(store.url, store.storage_options)
    info = fs.info(f"{path.rstrip('/')}/zarr.json")
    written = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
    return [store.url, store.provenance.get("created"), store.n_rows,
            int(store.done_chunks().sum()), str(written)]


def _no_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
            np.zeros(0, np.float32))


def _matches(a: Signatures, b: Signatures, threshold: float, same: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (row of ``a``, row of ``b``) whose thumbnails correlate at
    :data:`CANDIDATE_CORRELATION` or more and whose details at ``threshold`` or more; within
    one store (``same``), each pair once and no row with itself: each block of ``a`` is
    compared with the rows of ``b`` after its own first row only (half the products).
    Returns the rows and both correlations."""
    found: list[tuple[np.ndarray, ...]] = []
    step = max(64, min(BLOCK_ROWS, BLOCK_VALUES // max(len(b.rows), 1)))
    for start in range(0, len(a.rows), step):
        stop = min(start + step, len(a.rows))
        first = start if same else 0
        block = a.thumbnails[start:stop] @ b.thumbnails[first:].T
        if same:  # the block's own square: keep j > i only
            square = block[:, :stop - start]
            square[np.tril_indices(stop - start)] = -1.0
        for i in np.flatnonzero(block.max(axis=1, initial=-1.0) >= CANDIDATE_CORRELATION):
            hits = np.flatnonzero(block[i] >= CANDIDATE_CORRELATION)
            detail = b.details[first + hits] @ a.details[start + i]
            confirmed = detail >= threshold
            found.append((np.full(int(confirmed.sum()), a.rows[start + i]),
                          b.rows[first + hits[confirmed]], block[i, hits[confirmed]],
                          detail[confirmed]))
    if not found:
        return _no_pairs()
    rows_a, rows_b, shape, texture = (np.concatenate(part) for part in zip(*found, strict=True))
    return rows_a, rows_b, shape, texture


def find_overlap(a: FeatureStore | str, b: FeatureStore | str | None = None, *,
                 threshold: float = DEFAULT_THRESHOLD,
                 storage_options: StorageOptions | None = None) -> pd.DataFrame:
    """The images of store ``b`` that are images of store ``a`` (with ``b`` None: the images
    of ``a`` that repeat within it), one row per pair.

    Returns
    -------
    pandas.DataFrame
        ``a_row``, ``a_image``, ``a_patient``, ``b_row``, ``b_image``, ``b_patient``, their
        thumbnails' ``correlation`` and their details' ``detail_correlation``, highest first.

    Raises
    ------
    OverlapUncheckable
        A store keeps no signatures.
    StoreMismatchError
        The stores were made with other preprocessing (their thumbnails are of other images
        sizes or crops, not comparable).
    """
    first = open_store(a, storage_options)
    second = first if b is None else open_store(b, storage_options)
    if not 0.0 < threshold <= 1.0:
        from cxrdask.errors import OptionError

        raise OptionError(f"threshold is the details' correlation in (0, 1], not {threshold}")
    if second is not first:
        _check_comparable(first, second)
    if second is first:
        signatures = standardised_signatures(first)
        rows_a, rows_b, shape, texture = _matches(signatures, signatures, threshold, same=True)
    else:
        rows_a, rows_b, shape, texture = _streamed_matches(first, second, threshold)
    order = np.argsort(-texture, kind="stable")
    rows_a, rows_b, shape, texture = rows_a[order], rows_b[order], shape[order], texture[order]
    return pd.DataFrame({
        "a_row": rows_a, "a_image": first.read("image_index")[rows_a],
        "a_patient": first.read("patient_id")[rows_a],
        "b_row": rows_b, "b_image": second.read("image_index")[rows_b],
        "b_patient": second.read("patient_id")[rows_b],
        "correlation": shape.astype(np.float64), "detail_correlation": texture.astype(np.float64)})


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
    _check_signatures(store)
    _check_signatures(other)
    _check_comparable(other, store)
    readable = np.flatnonzero(store.read("status") == STATUS_OK)
    rows = np.sort(np.random.default_rng(0).choice(
        readable, min(SCREEN_ROWS, len(readable)), replace=False))
    width = store.array("thumbnail").shape[1] * store.array("thumbnail").shape[2]
    picked = [np.asarray(store.array(name).get_orthogonal_selection(
        (rows, slice(None), slice(None)))).reshape(-1, width) for name in ("thumbnail", "detail")]
    (shape, flat_shape), (texture, flat_texture) = _unit(picked[0]), _unit(picked[1])
    kept = flat_shape & flat_texture
    sample = Signatures(rows[kept], shape[kept], texture[kept])
    return any(len(_matches(sample, block, threshold, same=False)[0])
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


def _check_comparable(first: FeatureStore, second: FeatureStore) -> None:
    """Thumbnails compare when both stores' images were brought to the model's input the
    same way (size and crop)."""
    from cxrdask.errors import StoreMismatchError

    keys = ("size", "crop", "crop_fraction")
    mine = {k: (first.provenance.get("preprocessing") or {}).get(k) for k in keys}
    theirs = {k: (second.provenance.get("preprocessing") or {}).get(k) for k in keys}
    differences = {f"preprocessing {k}": (theirs[k], mine[k]) for k in keys if mine[k] != theirs[k]}
    if differences:
        raise StoreMismatchError(second.url, differences)


__all__ = ["BLOCK_ROWS", "BLOCK_VALUES", "CANDIDATE_CORRELATION", "DEFAULT_THRESHOLD", "EXACT_PAIRS",
           "SCREEN_ROWS", "Copies", "OverlapUncheckable", "Signatures", "copies_in",
           "copies_of_earlier", "copies_phrase", "find_overlap", "signature_blocks",
           "standardised_signatures"]
