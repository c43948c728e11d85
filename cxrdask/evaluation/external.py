"""Whether a score is external: the rows of a store that are images a head trained on.

A head scored on a store of another archive is an external validation only where none of the
scored images is one it trained on. RSNA Pneumonia's images are NIH ChestX-ray14's, so an NIH
head scored on an RSNA store would be scored partly on its own training images; evaluation
finds such rows (:func:`~cxrdask.store.overlap.find_overlap`, by the stores' thumbnails),
leaves them out, and says how many and why. Where it cannot check (a training store it cannot
open, or one made before stores kept thumbnails) it says so, and does not call what remains
external.

A head trained on several stores learnt each image once, through its first store's copy
(:func:`~cxrdask.store.copies.copies_of_earlier`): scored on a later training store, the
rows that are copies of an earlier store's images are left out the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from cxrdask._fs import StorageOptions
from cxrdask.errors import CxrDaskError
from cxrdask.head.model import Checkpoint
from cxrdask.store.copies import Copies, copies_in
from cxrdask.store.features import FeatureStore


@dataclass(frozen=True)
class OverlapCheck:
    """What was checked of a scored store against the head's training stores.

    Attributes
    ----------
    checked : bool
        Every training store was compared with the scored one.
    found : dict of str to numpy.ndarray
        Per training store (by URL), the scored store's rows that are its images; ``rows``
        (all of them: left out of the score) and ``pairs`` (how many per store) follow.
    reason : str
        Why it was not checked (empty where it was).
    internal : bool
        The scored store is one the head trained on (the rows are copies of earlier
        training stores' images, which the head learnt from there).
    """

    checked: bool
    found: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    reason: str = ""
    internal: bool = False

    @property
    def rows(self) -> np.ndarray:
        """The scored store's rows that are images of a training store."""
        return Copies(self.found).rows

    @property
    def pairs(self) -> dict[str, int]:
        """Rows found per training store (by URL)."""
        return Copies(self.found).per_store

    def within(self, keep: np.ndarray) -> OverlapCheck:
        """The check restricted to the rows ``keep`` (a mask over the store's rows) says
        are scored: the rows left out of this score, not of the whole store."""
        return replace(self, found={url: rows[keep[rows]] for url, rows in self.found.items()})

    def sentence(self) -> str:
        """One line for the report."""
        if self.internal:
            return self._internal_sentence()
        if not self.checked:
            return (f"Overlap with the head's training images not checked ({self.reason}): "
                    "this score is not shown to be external.")
        if not len(self.rows):
            return ("Overlap with the head's training images checked (by thumbnails, against "
                    f"{len(self.pairs)} training store(s)): none of the scored images is one.")
        found = ", ".join(f"{n} of {url}" for url, n in self.pairs.items() if n)
        return (f"Left out: {len(self.rows)} row(s) whose image is one the head trained on "
                f"({found}; found by thumbnails); the score is on the rest.")

    def _internal_sentence(self) -> str:
        if not self.checked:
            return (f"Copies of the earlier training stores' images not checked ({self.reason}): "
                    "rows here may be images the head learnt from another store.")
        if not len(self.rows):
            return ("Copies of the earlier training stores' images checked (by thumbnails): "
                    "none among the scored rows.")
        found = ", ".join(f"{n} of {url}" for url, n in self.pairs.items() if n)
        return (f"Left out: {len(self.rows)} row(s) whose image is also in an earlier training "
                f"store ({found}; found by thumbnails), where the head learnt it; the score "
                "is on the rest.")

    def to_json(self) -> dict:
        return {"checked": self.checked, "rows_left_out": len(self.rows),
                "per_training_store": self.pairs, "reason": self.reason or None,
                "internal": self.internal}


def training_stores(ckpt: Checkpoint) -> list[str]:
    """The URLs of the stores a head trained on, as its checkpoint records them."""
    stores = ckpt.provenance.get("stores")
    if stores:
        return [each["url"] for each in stores]
    url = ckpt.provenance.get("store_url")
    return [url] if url else []


def _same_place(first: str, second: str) -> bool:
    """Whether two URLs name one store (a local path relative or absolute alike)."""
    import os

    def plain(url: str) -> str:
        return os.path.abspath(url).rstrip("/") if "://" not in url else url.rstrip("/")

    return plain(first) == plain(second)


def training_position(store: FeatureStore, ckpt: Checkpoint) -> int | None:
    """Where ``store`` is among the stores the head trained on (0 the first), None where it
    is none of them: by its rows' fingerprint where the checkpoint records it (a copy of a
    training store is one), else by its place."""
    records = ckpt.provenance.get("stores") or []
    fingerprint = store.provenance.get("rows_fingerprint")
    for k, record in enumerate(records):
        if fingerprint and record.get("rows_fingerprint") == fingerprint:
            return k
    return next((k for k, url in enumerate(training_stores(ckpt)) if _same_place(store.url, url)),
                None)


def trained_on(store: FeatureStore, ckpt: Checkpoint) -> bool:
    """Whether ``store`` is one the head trained on (:func:`training_position`)."""
    return training_position(store, ckpt) is not None


def training_overlap(store: FeatureStore, ckpt: Checkpoint,
                     storage_options: StorageOptions | None = None) -> OverlapCheck | None:
    """The scored store's rows that are images the head trained on: of any training store
    where the store is not one (an external score); of the training stores listed before it
    where it is (a head on several stores learnt each image through its first copy); None
    for the first or only training store (an internal score: its splits are its own)."""
    position = training_position(store, ckpt)
    if position == 0:
        return None
    urls = training_stores(ckpt)
    if not urls:
        return OverlapCheck(False, reason="the checkpoint names no training store")
    internal = position is not None
    if internal:
        urls = urls[:position]
    try:
        copies = copies_in(store, urls, storage_options=storage_options)
    except (CxrDaskError, OSError) as exc:
        return OverlapCheck(False, reason=str(exc).splitlines()[0], internal=internal)
    return OverlapCheck(True, copies.found, internal=internal)


__all__ = ["OverlapCheck", "trained_on", "training_overlap", "training_position",
           "training_stores"]
