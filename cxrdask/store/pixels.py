"""The pixel store: an archive decoded and resized once, kept as 8-bit images in Zarr.

PNG decoding is the bound of every extraction on a GPU node, and users extract the same
archive many times (another backbone, new weights, another precision). A pixel store keeps
the decoded, resized images, uint8 ``(N, size, size)``, in the rows, order and chunking of
a feature store, with the same ``status``/``error`` arrays, done markers, resume, writer
lease and provenance. An extraction from it (``source=``, ``--source``) reads chunks
instead of PNGs. Its provenance names the source archive and the decode and resize
settings; a store made with one resize is never used for another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from cxrdask._fs import StorageOptions
from cxrdask.archive.labels import LABELS
from cxrdask.config import PixelCompression
from cxrdask.errors import OptionError, StoreKindError
from cxrdask.store.features import FeatureStore
from cxrdask.store.rows import STATUS_OK, RowStore, common_provenance
from cxrdask.store.targets import StoreKind

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PIXEL_COMPRESSION: PixelCompression = "zstd"
# The decode and resize settings a pixel store is made with; an extraction from it uses
# them, and a store made with other values is refused.
# What makes pixels: a pixel store serves every backbone of its size and crop (one gray
# channel is kept; normalisation and channels come later, on the worker's device).
PIXEL_SETTINGS = ("size", "interpolation", "reducing_gap", "crop", "crop_fraction")
_PIXEL_DEFAULTS = {"crop": "none", "crop_fraction": 1.0}  # for pixel stores made before the setting existed


def pixel_codecs(compression: PixelCompression) -> tuple:
    """Codecs of the ``pixels`` array, each chunk with a CRC-32C.

    zstd level 1 is the default: benchmarks/bench_pixels.py measured it against lz4 and
    no compression on 224² images (size on disk against decode speed; see docs/deploy.md).
    """
    if compression == "zstd":
        return (ZstdCodec(level=1), Crc32cCodec())
    if compression == "lz4":
        return (BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=1), Crc32cCodec())
    if compression == "none":
        return (Crc32cCodec(),)
    raise OptionError(f"compression must be zstd, lz4 or none, not {compression!r}")


class PixelStore(RowStore):
    """Decoded, resized 8-bit images in a Zarr v3 group: ``pixels`` ``(N, size, size)``.

    The same layout as a :class:`~cxrdask.store.features.FeatureStore` otherwise: ``status``,
    ``error``, ``done``, the per-row table, labels and split, chunked alike, so a feature
    store extracted from it has the very same rows and chunks.
    """

    KIND: ClassVar[StoreKind] = "pixels"
    DATA_ARRAY = "pixels"
    NOUN = "pixel store"

    @classmethod
    def create(
        cls,
        url: str,
        table: pd.DataFrame,
        *,
        chunk_rows: int,
        preprocessing: dict,
        split: dict | None = None,
        source: dict | None = None,
        compression: PixelCompression = DEFAULT_PIXEL_COMPRESSION,
        storage_options: StorageOptions | None = None,
        extra: dict | None = None,
        overwrite: bool = False,
    ) -> PixelStore:
        """Make a new pixel store for the rows of ``table`` (metadata columns plus ``split``).

        Parameters
        ----------
        url
            Where to make it (any fsspec URL).
        table
            The rows, in store order.
        chunk_rows
            Rows per chunk.
        preprocessing
            ``Preprocessing.to_dict()``: its size, interpolation and reducing gap are what
            the pixels are; mean and std are applied later, by each extraction.
        split
            The split's description.
        source
            The archive the images came from (root, whether synthetic).
        compression
            ``zstd`` (default), ``lz4`` or ``none``.
        storage_options, extra, overwrite
            As for :meth:`FeatureStore.create`.
        """
        provenance = {
            **common_provenance(table, chunk_rows),
            "kind": cls.KIND,
            "preprocessing": {key: {**_PIXEL_DEFAULTS, **preprocessing}[key]
                              for key in PIXEL_SETTINGS},
            "compression": compression,
            "split": split or {},
            "source": source or {},
            **(extra or {}),
        }
        size = int(preprocessing["size"])
        data = dict(shape=(len(table), size, size), chunks=(chunk_rows, size, size), dtype="uint8",
                    compressors=pixel_codecs(compression), fill_value=0,
                    dimension_names=("image", "y", "x"))
        return cls._create_group(url, table, chunk_rows, provenance, data, storage_options,
                                 overwrite)

    @property
    def size(self) -> int:
        """Side of the stored images, in pixels."""
        return int(self.provenance["preprocessing"]["size"])

    def __repr__(self) -> str:
        """From the provenance read at open: no I/O."""
        prep = self.provenance["preprocessing"]
        return (f"PixelStore({self.url!r}, rows={self.n_rows}, chunks={self.n_chunks}x"
                f"{self.chunk_rows}, {self.size}x{self.size} uint8, {prep['interpolation']}, "
                f"{self.provenance.get('compression')})")

    def check_pixel_settings(self, preprocessing: dict) -> None:
        """Refuse (:class:`~cxrdask.errors.StoreMismatchError`) a use with other decode or
        resize settings than the pixels were made with."""
        from cxrdask.errors import StoreMismatchError

        mine = {**_PIXEL_DEFAULTS, **self.provenance["preprocessing"]}
        wanted = {**_PIXEL_DEFAULTS, **preprocessing}
        differences = {f"preprocessing.{key}": (mine.get(key), wanted.get(key))
                       for key in PIXEL_SETTINGS if mine.get(key) != wanted.get(key)}
        if differences:
            raise StoreMismatchError(self.url, differences)

    def write_chunk(self, chunk: int, pixels: np.ndarray, status: np.ndarray,
                    errors: list[str], done: bool = True) -> None:
        """Write one chunk's images, status and error text; then, last, its done marker."""
        start, stop = self.chunk_bounds(chunk)
        if pixels.shape != (stop - start, self.size, self.size) or pixels.dtype != np.uint8:
            raise ValueError(f"chunk {chunk}: pixels of shape {pixels.shape} ({pixels.dtype}), "
                             f"expected {(stop - start, self.size, self.size)} uint8")
        out = np.array(pixels, copy=True)
        out[status != STATUS_OK] = 0
        self.array("pixels")[start:stop] = out
        self.array("status")[start:stop] = status.astype(np.uint8)
        self.array("error")[start:stop] = np.asarray(errors, dtype=str)
        if done:
            self.array("done")[chunk] = True

    def read_chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chunk's ``(pixels, status, error)``; raises CorruptChunkError naming a bad chunk."""
        start, stop = self.chunk_bounds(chunk)
        rows = slice(start, stop)
        return self.read("pixels", rows), self.read("status", rows), self.read("error", rows)

    def metadata_table(self) -> pd.DataFrame:
        """The rows as a metadata frame (with ``split``): what a feature store made from this
        pixel store records, so its rows are these rows in this order."""
        import pandas as pd  # not at the top: a worker writing pixels never needs it

        frame = pd.DataFrame({
            "image_index": self.read("image_index"),
            "patient_id": self.read("patient_id"),
            "follow_up": self.read("follow_up"),
            "age": self.read("age"),
            "sex": self.read("sex"),
            "view_position": self.read("view"),
        })
        labels = self.read("labels")
        for position, label in enumerate(LABELS):
            frame[label] = labels[:, position]
        frame["split"] = self.read("split")
        return frame


def open_any_store(url: str, *, storage_options: StorageOptions | None = None,
                   mode: Literal["r", "r+"] = "r") -> RowStore:
    """Open the feature store or the pixel store at ``url``, whichever it is (``cxrdask info``,
    ``cxrdask verify``)."""
    try:
        return FeatureStore.open(url, storage_options=storage_options, mode=mode)
    except StoreKindError as exc:
        if exc.kind != PixelStore.KIND:
            raise
        return PixelStore.open(url, storage_options=storage_options, mode=mode)


__all__ = ["DEFAULT_PIXEL_COMPRESSION", "PIXEL_SETTINGS", "PixelCompression", "PixelStore",
           "open_any_store", "pixel_codecs"]
