"""The feature store: a backbone's features of every image row, with how they were made.

A :class:`~cxrdask.store.rows.RowStore` (rows, chunks, done markers, the per-row table) whose
data array is ``features`` ``(N, feature_dim)``, float16 or float32, and whose provenance
records the :class:`FeatureSettings` a resumed run must match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

if TYPE_CHECKING:
    import dask.array as da
    import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.errors import FeatureOverflowError, OptionError
from cxrdask.store.rows import (
    ATTRS_KEY,
    DEFAULT_CHUNK_ROWS,
    FORMAT_VERSION,
    ROW_SETTINGS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    TABLE_ARRAYS,
    RowStore,
    _normal,
    common_provenance,
    rows_fingerprint,
    zarr_store,
)
from cxrdask.store.targets import StoreKind

FLOAT16_MAX = 65504.0
# Each image's signatures (side x side: its thumbnail and its fine detail, from the model's
# input): what overlap search compares, 2 KB a row beside the features' 4 KB.
THUMBNAIL_SIDE = 32
# Settings that must match for a run to write into an existing feature store.
WRITE_SETTINGS = (*ROW_SETTINGS, "backbone", "preprocessing", "dtype", "precision", "compile",
                  "engine")


@dataclass(frozen=True)
class FeatureSettings:
    """How a store's features are computed: recorded in its provenance, and what a resumed
    run must match (:meth:`FeatureStore.check_settings`). Concrete values only: an
    extraction resolves its ``auto`` choices first (:mod:`cxrdask.extract.resolve`)."""

    backbone: dict[str, Any]  # ``BackboneSpec.identity()``, with ``feature_dim``
    preprocessing: dict[str, Any]  # ``Preprocessing.to_dict()``
    dtype: Literal["float16", "float32"] = "float16"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    engine: Literal["torch", "onnxruntime", "openvino"] = "torch"
    split: dict[str, Any] = field(default_factory=dict)  # the split's description

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compile": bool(self.compile)}


def _features_codecs(dtype: str) -> tuple:
    # Blosc zstd-5 with byte shuffle: the smallest of the codecs measured on these features;
    # then a CRC-32C of the compressed chunk, so a chunk damaged on disk is caught at read.
    return (BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize),
            Crc32cCodec())


class FeatureStore(RowStore):
    """A cxrdask feature store: one Zarr v3 group, opened with :meth:`open`, made with :meth:`create`.

    Rows are images, in split order (train, validation, test). ``features`` is chunked by
    ``chunk_rows``; ``status``, ``error``, the per-row table and ``labels`` share its chunking;
    ``done`` holds one marker per chunk, written last. Every array names its dimensions, so
    ``xarray.open_zarr(url)`` (or :meth:`to_xarray`) gives a labelled Dataset.

    Attributes
    ----------
    url : str
        Where the store is.
    provenance : dict
        Backbone and weights identity, preprocessing, dtype, precision, engine, split, the
        extraction config, failed-row count, the last run.
    """

    KIND: ClassVar[StoreKind] = "features"
    DATA_ARRAY = "features"
    NOUN = "feature store"
    SETTINGS = WRITE_SETTINGS
    SETTING_DEFAULTS: ClassVar[dict[str, Any]] = {"engine": "torch"}  # older stores ran PyTorch

    @classmethod
    def create(
        cls,
        url: str,
        table: pd.DataFrame,
        settings: FeatureSettings | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        storage_options: StorageOptions | None = None,
        extra: dict | None = None,
        overwrite: bool = False,
        **fields: Any,
    ) -> FeatureStore:
        """Make a new store for the rows of ``table`` (metadata columns plus ``split``).

        Parameters
        ----------
        url
            Where to make it (any fsspec URL).
        table
            The rows, in store order, with the metadata's columns and ``split`` codes.
        settings, **fields
            How the features are computed: backbone identity (with ``feature_dim``),
            preprocessing, dtype, precision, compile, engine and the split's description
            (recorded; a resume must match): a :class:`FeatureSettings`, or its fields by
            name (``backbone=..., preprocessing=..., dtype="float32"``).
        chunk_rows
            Rows per chunk of every per-row array.
        storage_options
            fsspec options.
        extra
            More provenance (the extraction config, the archive, what was resolved).
        overwrite
            Replace a store already at ``url``: its own arrays and metadata are removed,
            nothing else.

        Returns
        -------
        FeatureStore
            Open for writing chunks.

        Raises
        ------
        StoreError
            A store exists at ``url`` and ``overwrite`` is False, or ``table`` is empty.
        WriteTargetError
            ``url`` is a file, a pixel store, or a folder holding files that are not a
            store's own (checked before anything is written).
        OptionError
            An unknown dtype, or ``chunk_rows`` below 1.
        """
        if settings is None:
            settings = FeatureSettings(**fields)
        elif fields:
            raise OptionError(f"give the settings as a FeatureSettings or by name, not both "
                              f"({', '.join(sorted(fields))})")
        if settings.dtype not in ("float16", "float32"):
            raise OptionError(f"dtype must be float16 or float32, not {settings.dtype!r}")
        provenance = {**common_provenance(table, chunk_rows), **settings.to_dict(),
                      **(extra or {})}
        dtype = settings.dtype
        dim = int(settings.backbone["feature_dim"])
        data = dict(shape=(len(table), dim), chunks=(chunk_rows, dim), dtype=dtype,
                    compressors=_features_codecs(dtype), fill_value=np.nan,
                    dimension_names=("image", "feature"))
        side = THUMBNAIL_SIDE
        signatures = {name: dict(shape=(len(table), side, side), chunks=(chunk_rows, side, side),
                                 dtype=dtype_, fill_value=0, compressors=(ZstdCodec(), Crc32cCodec()),
                                 dimension_names=("image", "signature_y", "signature_x"))
                      for name, dtype_ in (("thumbnail", "uint8"), ("detail", "int8"))}
        return cls._create_group(url, table, chunk_rows, provenance, data, storage_options,
                                 overwrite, more=signatures)

    @property
    def has_thumbnails(self) -> bool:
        """Whether the store keeps each image's signatures, thumbnail and detail (stores made
        before they were kept do not: what overlap search reads, :mod:`cxrdask.store.overlap`)."""
        return "thumbnail" in self.group and "detail" in self.group

    @property
    def feature_dim(self) -> int:
        return int(self.provenance["backbone"]["feature_dim"])

    def __repr__(self) -> str:
        """From the provenance read at open: no I/O (``info()`` or ``done_chunks()`` read more)."""
        backbone = self.provenance["backbone"]
        return (f"FeatureStore({self.url!r}, rows={self.n_rows}, chunks={self.n_chunks}x"
                f"{self.chunk_rows}, {backbone['name']} [{backbone['weights']}], "
                f"{self.provenance['dtype']})")

    @property
    def features(self) -> da.Array:
        """The features as a dask array chunked like the store; nothing is read until computed."""
        import dask.array as da  # here, not at import: `cxrdask info` stays fast

        return da.from_zarr(self.array("features"))

    def to_xarray(self):
        """The store as a labelled :class:`xarray.Dataset` of lazy dask arrays.

        Dimensions ``image`` (coordinate: the image index), ``feature`` and ``finding``
        (coordinate: the 14 label names), ``chunk`` for the done markers; the provenance as
        attributes. Stores written before dimension names were recorded are labelled here
        the same way. Nothing is read until computed.
        """
        import dask.array as da
        import xarray as xr

        dims = {"features": ("image", "feature"), "labels": ("image", "finding"),
                "done": ("chunk",)}
        variables = {}
        for name in ("features", "status", "error", "done", "labels", "split",
                     *(n for n in TABLE_ARRAYS if n != "image_index")):
            array = self.array(name)
            data = da.from_zarr(array) if name != "error" else array[:]
            variables[name] = (dims.get(name, ("image",)), data)
        coords = {"image": self.read("image_index"),
                  "finding": list(self.provenance["label_names"])}
        return xr.Dataset(variables, coords=coords, attrs={ATTRS_KEY: _normal(self.provenance)})

    def write_chunk(self, chunk: int, features: np.ndarray, status: np.ndarray,
                    errors: list[str], done: bool = True,
                    signatures: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Write one chunk's rows (features, status, error text, and the images' signatures,
        thumbnails and details, where given and kept); then, last, its done marker (left
        unset with ``done=False``: rows to read again, the next run recomputes it)."""
        start, stop = self.chunk_bounds(chunk)
        if features.shape != (stop - start, self.feature_dim):
            raise ValueError(f"chunk {chunk}: features of shape {features.shape}, expected "
                             f"{(stop - start, self.feature_dim)}")
        dtype = self.provenance["dtype"]
        ok = status == STATUS_OK
        if dtype == "float16":
            finite = np.isfinite(features[ok])
            peak = float(np.abs(features[ok][finite]).max(initial=0.0))
            if not finite.all() or peak > FLOAT16_MAX:
                raise FeatureOverflowError(
                    f"chunk {chunk} (rows {start}-{stop - 1}) of {self.url}: backbone outputs "
                    f"reach {peak:g} (or are not finite), beyond float16's {FLOAT16_MAX:g}; "
                    "extract with dtype='float32' (--dtype float32)"
                )
        out = features.astype(dtype)
        out[~ok] = np.nan  # failed rows never look like data
        self.array("features")[start:stop] = out
        self.array("status")[start:stop] = status.astype(np.uint8)
        self.array("error")[start:stop] = np.asarray(errors, dtype=str)
        if signatures is not None and self.has_thumbnails:
            self.array("thumbnail")[start:stop], self.array("detail")[start:stop] = signatures
        if done:
            self.array("done")[chunk] = True


def open_store(store: FeatureStore | str, storage_options: StorageOptions | None = None
               ) -> FeatureStore:
    """Accept a store or its URL (what every function that takes a store calls first)."""
    if isinstance(store, FeatureStore):
        return store
    return FeatureStore.open(str(store), storage_options=storage_options)


__all__ = [
    "ATTRS_KEY",
    "DEFAULT_CHUNK_ROWS",
    "FLOAT16_MAX",
    "FORMAT_VERSION",
    "STATUS_FAILED",
    "STATUS_OK",
    "STATUS_PENDING",
    "THUMBNAIL_SIDE",
    "WRITE_SETTINGS",
    "FeatureSettings",
    "FeatureStore",
    "common_provenance",
    "open_store",
    "rows_fingerprint",
    "zarr_store",
]
