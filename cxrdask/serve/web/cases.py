"""Similar cases beside a diagnosis: the stored images nearest to an upload, with their labels.

``cxrdask serve --store STORE`` opens the store's nearest-neighbour index
(:mod:`cxrdask.store.neighbours`; built and kept beside the store where it is missing or
stale) once, and every diagnosis then lists the five stored images most like the upload,
found with the features the page's backbone computed for it. The store must hold features
of the head's backbone and preprocessing (refused at start otherwise). Each case's picture
is its image in the pixel store the store was extracted from, where there is one, else the
32 x 32 thumbnail every store keeps of each image, enlarged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cxrdask.errors import CheckpointMismatchError
from cxrdask.head.model import Checkpoint
from cxrdask.store.features import FeatureStore, open_store
from cxrdask.store.neighbours import NeighbourIndex, neighbours, open_index

SHOWN = 5  # cases beside a diagnosis
PICTURE_SIDE = 128  # pixels of a case's picture


@dataclass
class SimilarCases:
    """A store and its index, ready to answer for the page."""

    store: FeatureStore
    index: NeighbourIndex
    pixels: Any = None  # the pixel store the features came from, where there is one

    @classmethod
    def open(cls, store: str | FeatureStore, checkpoint: Checkpoint) -> SimilarCases:
        """The store's index, after checking that it holds features of ``checkpoint``'s
        backbone and preprocessing (:class:`CheckpointMismatchError` otherwise)."""
        opened = open_store(store)
        try:  # the check every reader of a store with a head makes
            checkpoint.check_features(opened.provenance["backbone"],
                                      opened.provenance["preprocessing"])
        except CheckpointMismatchError as exc:
            raise CheckpointMismatchError(f"{opened.url}: similar cases need a store of the "
                                          f"head's backbone and preprocessing: {exc}") from None
        return cls(opened, open_index(opened), _pixel_store(opened))

    def around(self, features: np.ndarray, k: int = SHOWN) -> dict[str, Any]:
        """The ``k`` stored images most like an image of these ``features``, for the JSON."""
        found = neighbours(self.store, features, k, index=self.index)
        cases = [{**{key: _plain(value) for key, value in row.items()},
                  "picture": f"/api/cases/{int(row['row'])}.png"}
                 for row in found.to_dict(orient="records")]
        same = found.attrs["query_in_store"]
        return {"store": self.store.url, "query_in_store": None if same is None else int(same),
                "cases": cases}

    def picture(self, row: int) -> bytes:
        """A stored image as a PNG: from the pixel store where there is one, else its
        thumbnail, enlarged to ``PICTURE_SIDE``."""
        if not 0 <= row < self.store.n_rows:
            raise IndexError(row)
        if self.pixels is not None:
            gray = np.asarray(self.pixels.read("pixels", row), dtype=np.uint8)
        else:
            gray = np.asarray(self.store.read("thumbnail", row), dtype=np.uint8)
        image = Image.fromarray(gray).resize((PICTURE_SIDE, PICTURE_SIDE), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def _pixel_store(store: FeatureStore):
    """The pixel store the features were extracted from, when it is recorded and opens."""
    recorded = ((store.provenance.get("archive") or {}).get("pixels") or {}).get("url")
    if not recorded:
        return None
    try:
        from cxrdask.store.pixels import PixelStore

        return PixelStore.open(recorded, storage_options=store.storage_options)
    except Exception:  # moved or gone: the thumbnails will do
        return None


def _plain(value: Any) -> Any:
    """A NumPy scalar as the JSON's number or string."""
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["PICTURE_SIDE", "SHOWN", "SimilarCases"]
