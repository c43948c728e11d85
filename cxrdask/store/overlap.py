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
(:class:`OverlapUncheckable`) rather than guess. ``cxrdask overlap`` runs it; training and
evaluation ask it through :mod:`cxrdask.store.copies` (which rows a head learnt elsewhere).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.errors import CxrDaskError
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


def standardised(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows less their mean, over their norm; and which rows were not flat (norm > 0)."""
    values = values.astype(np.float32)
    values -= values.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(values, axis=1)
    kept = norms > 1e-3
    values[kept] /= norms[kept, None]
    return values, kept


def check_signatures(store: FeatureStore) -> None:
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
    check_signatures(store)
    readable = np.flatnonzero(store.read("status") == STATUS_OK)
    thumbs, details = store.array("thumbnail"), store.array("detail")
    step = max(1, block_rows // store.chunk_rows) * store.chunk_rows
    for start in range(0, store.n_rows, step):
        stop = min(start + step, store.n_rows)
        chosen = readable[(readable >= start) & (readable < stop)]
        if len(chosen) == 0:
            continue
        yield signatures_of(chosen, np.asarray(thumbs[start:stop])[chosen - start],
                            np.asarray(details[start:stop])[chosen - start])


def signatures_of(rows: np.ndarray, thumbnails: np.ndarray, details: np.ndarray) -> Signatures:
    """``rows``' signatures as read from the store (``(rows, side, side)`` each), standardised;
    a row whose thumbnail or detail is flat is left out."""
    width = thumbnails.shape[-2] * thumbnails.shape[-1]
    shape, flat_shape = standardised(thumbnails.reshape(-1, width))
    texture, flat_texture = standardised(details.reshape(-1, width))
    kept = flat_shape & flat_texture
    return Signatures(np.asarray(rows)[kept], shape[kept], texture[kept])


def standardised_signatures(store: FeatureStore) -> Signatures:
    """Every block of :func:`signature_blocks` at once (the within-store search needs them
    all)."""
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
    streams_first = first.n_rows >= second.n_rows  # hold the smaller, stream the larger
    held = standardised_signatures(second if streams_first else first)
    found = []
    for block in signature_blocks(first if streams_first else second):
        rows_streamed, rows_held, shape, texture = matching_pairs(block, held, threshold, same=False)
        found.append((rows_streamed, rows_held, shape, texture) if streams_first
                     else (rows_held, rows_streamed, shape, texture))
    if not found:
        return _no_pairs()
    rows_a, rows_b, shape, texture = (np.concatenate(part) for part in zip(*found, strict=True))
    return rows_a, rows_b, shape, texture


def _no_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
            np.zeros(0, np.float32))


def matching_pairs(a: Signatures, b: Signatures, threshold: float, same: bool
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
        check_comparable(first, second)
    if second is first:
        signatures = standardised_signatures(first)
        rows_a, rows_b, shape, texture = matching_pairs(signatures, signatures, threshold, same=True)
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


def check_comparable(first: FeatureStore, second: FeatureStore) -> None:
    """Thumbnails compare when both stores' images were brought to the model's input the
    same way (size and crop)."""
    from cxrdask.errors import StoreMismatchError

    keys = ("size", "crop", "crop_fraction")
    mine = {k: (first.provenance.get("preprocessing") or {}).get(k) for k in keys}
    theirs = {k: (second.provenance.get("preprocessing") or {}).get(k) for k in keys}
    differences = {f"preprocessing {k}": (theirs[k], mine[k]) for k in keys if mine[k] != theirs[k]}
    if differences:
        raise StoreMismatchError(second.url, differences)


__all__ = ["BLOCK_ROWS", "BLOCK_VALUES", "CANDIDATE_CORRELATION", "DEFAULT_THRESHOLD",
           "OverlapUncheckable", "Signatures", "check_comparable", "check_signatures",
           "find_overlap", "matching_pairs", "signature_blocks", "signatures_of", "standardised",
           "standardised_signatures"]
