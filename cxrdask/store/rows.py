"""What every cxrdask store shares: one Zarr v3 group of image rows, chunked for tasks.

Rows are images, in split order (train, validation, test). A store's data array (a feature
store's ``features``, a pixel store's ``pixels``) is chunked by ``chunk_rows``, and each
extraction task owns whole chunks of it and of ``status``, ``error`` and one ``done``
element, so concurrent writers never share a chunk and need no lock. The per-row table
(image index, labels, demographics, split) is written once, when the store is created. A
chunk's ``done`` marker is written last: a chunk whose data landed but whose marker did not
is recomputed on resume, never trusted. :class:`RowStore` holds all of this;
:class:`~cxrdask.store.features.FeatureStore` and :class:`~cxrdask.store.pixels.PixelStore`
are its two kinds, siblings, each adding its own data array.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import google_crc32c
import numpy as np
import zarr
import zarr.storage
from zarr.codecs import Crc32cCodec, ZstdCodec

if TYPE_CHECKING:
    import pandas as pd
    from typing_extensions import Self

from cxrdask import __version__
from cxrdask._fs import StorageOptions, filesystem, find_files, is_local, with_defaults
from cxrdask.archive.findings import MISSING, findings_of, float_labels, label_matrix
from cxrdask.errors import (
    CorruptChunkError,
    OptionError,
    StoreError,
    StoreKindError,
    StoreMismatchError,
    StoreNotFoundError,
)
from cxrdask.options import storage_options_by_keyword
from cxrdask.store.lease import LEASE_NAME
from cxrdask.store.targets import StoreKind, check_store_target, clear_store

FORMAT_VERSION = 1
ATTRS_KEY = "cxrdask"
DEFAULT_CHUNK_ROWS = 512
STATUS_PENDING, STATUS_OK, STATUS_FAILED = 0, 1, 2
STATUS_MEANINGS = ("pending", "ok", "failed")  # by code: what flag_meanings says of status


def flag_attributes(meanings: tuple[str, ...] | dict[int, str]) -> dict[str, Any]:
    """CF conventions' ``flag_values`` and ``flag_meanings`` for an array of codes, so that
    xarray (and cf_xarray's ``.cf.flags``) users decode ``status`` and ``split`` without
    reading cxrdask's code. ``meanings``: by code, or a tuple whose position is the code."""
    pairs = meanings.items() if isinstance(meanings, dict) else enumerate(meanings)
    values, names = zip(*sorted(pairs), strict=True)
    return {"flag_values": list(values), "flag_meanings": " ".join(names)}
# What every store's rows must match for a run to write into it (a kind adds its own).
ROW_SETTINGS = ("format_version", "chunk_rows", "label_names", "n_rows", "rows_fingerprint",
                "split")
# Chunks per shard of the per-row table arrays (65,536 rows at 512 a chunk): 16 objects per
# column for a million rows, where there were 1,954.
TABLE_SHARD_CHUNKS = 128
TABLE_ARRAYS: dict[str, tuple[str, Any]] = {  # store array -> (metadata column, dtype)
    "image_index": ("image_index", str),
    "patient_id": ("patient_id", "int32"),
    "follow_up": ("follow_up", "int32"),
    "age": ("age", "int16"),
    "sex": ("sex", str),
    "view": ("view_position", str),
}
_CHECKED = (ZstdCodec(), Crc32cCodec())  # the task arrays' codecs: each chunk with its checksum


def zarr_store(url: str, storage_options: StorageOptions | None = None, read_only: bool = False):
    """A zarr store for any fsspec URL: LocalStore on disk, FsspecStore elsewhere (s3://, ...)."""
    fs, path = filesystem(url, storage_options)
    if is_local(fs):
        return zarr.storage.LocalStore(path, read_only=read_only)
    return zarr.storage.FsspecStore.from_url(
        url, storage_options=with_defaults(url, storage_options), read_only=read_only
    )


_FINGERPRINT_BLOCK = 100_000  # names hashed at a time
_CHUNKS_READ_AT_ONCE = 16  # chunks whose bytes verify asks for together (concurrently on S3)


def rows_fingerprint(image_indices) -> str:
    """sha256 of the ordered image indices, each followed by a newline: a resume must write
    the very same rows. Hashed a block of names at a time (one ``update`` per name took 2 s
    at a million rows); the digest is the same, so every store's recorded one still holds."""
    digest = hashlib.sha256()
    names = list(map(str, np.asarray(image_indices, dtype=object).tolist()))
    for start in range(0, len(names), _FINGERPRINT_BLOCK):
        block = names[start:start + _FINGERPRINT_BLOCK]
        digest.update(("\n".join(block) + "\n").encode())
    return digest.hexdigest()


def common_provenance(table: pd.DataFrame, chunk_rows: int) -> dict[str, Any]:
    """What every cxrdask store records about its rows: format, version, shape, fingerprint.

    Raises OptionError for ``chunk_rows`` below 1 and StoreError for an empty ``table``:
    every store is checked here, before anything is written.
    """
    if chunk_rows < 1:
        raise OptionError("chunk_rows must be at least 1")
    n_rows = len(table)
    if n_rows == 0:
        raise StoreError("no rows to store: the metadata (after filtering) is empty")
    return {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "chunk_rows": int(chunk_rows),
        "n_rows": int(n_rows),
        "n_chunks": math.ceil(n_rows / chunk_rows),
        "label_names": findings_of(table),
        "rows_fingerprint": rows_fingerprint(table["image_index"]),
    }


class RowStore:
    """A cxrdask store's rows: opened with :meth:`open` (on a kind), made by a kind's ``create``.

    ``status``, ``error``, the per-row table and ``labels`` share the data array's chunking;
    ``done`` holds one marker per chunk, written last. Every array names its dimensions, so
    ``xarray.open_zarr(url)`` gives a labelled Dataset.

    Attributes
    ----------
    url : str
        Where the store is.
    provenance : dict
        What the store records: its rows, how its data was made, the last run.
    """

    KIND: ClassVar[StoreKind]  # provenance["kind"]; stores written before kinds existed are features
    DATA_ARRAY: ClassVar[str]  # the array tasks fill, besides status, error and done
    NOUN: ClassVar[str]  # what errors call it
    SETTINGS: ClassVar[tuple[str, ...]] = ROW_SETTINGS  # what a run writing into it must match
    SETTING_DEFAULTS: ClassVar[dict[str, Any]] = {}  # for settings older stores lack

    def __init__(self, group: zarr.Group, url: str, storage_options: StorageOptions | None):
        self.group = group
        self.url = url
        self.storage_options = storage_options
        try:
            attributes = group.attrs[ATTRS_KEY]
        except KeyError:
            raise StoreError(f"{url} is a Zarr group but not a cxrdask store") from None
        if not isinstance(attributes, dict):
            raise StoreError(f"{url}: its {ATTRS_KEY!r} attribute is not a mapping")
        self.provenance: dict[str, Any] = dict(attributes)
        self._splits: np.ndarray | None = None

    def with_splits(self, codes: np.ndarray):
        """This store read with other split codes (nothing written): what a cross-validation
        fold's head trains and is scored on (the rows of other folds train, its own are the
        test split). The store's own split is untouched, for every other reader."""
        import copy

        codes = np.asarray(codes, dtype=np.int8)
        if codes.shape != (self.n_rows,):
            raise ValueError(f"{codes.shape[0] if codes.ndim else 0} split codes for "
                             f"{self.n_rows} rows")
        other = copy.copy(self)
        other._splits = codes
        return other

    # ------------------------------------------------------------------ create / open

    @classmethod
    def _create_group(cls, url: str, table: pd.DataFrame, chunk_rows: int, provenance: dict,
                      data: dict, storage_options: StorageOptions | None, overwrite: bool,
                      more: dict[str, dict] | None = None) -> Self:
        """Make the group: the data array (``cls.DATA_ARRAY``, from ``data``'s arguments), the
        task arrays (and a kind's ``more``, by name), the per-row table and coordinates, then
        the attributes, consolidated."""
        n_rows, n_chunks = len(table), provenance["n_chunks"]
        # A file, a store of the other kind or a folder holding other files is refused
        # before anything is written; overwriting removes the store's own entries alone
        # (zarr's mode "w" would clear the whole folder, whatever else it holds).
        check_store_target(url, cls.KIND, storage_options=storage_options)
        store = zarr_store(url, storage_options)
        if cls.exists(url, storage_options):
            if not overwrite:
                raise StoreError(f"a Zarr group or array already exists at {url}; open it, or "
                                 "create with overwrite=True")
            clear_store(url, cls.KIND, storage_options)
        group = zarr.open_group(store=store, mode="a", zarr_format=3)
        # Every array names its dimensions (Zarr v3 dimension_names), and ``image`` and
        # ``finding`` hold the coordinates, so xarray.open_zarr gives a labelled Dataset.
        group.create_array(cls.DATA_ARRAY, **data)
        for name, arguments in (more or {}).items():
            group.create_array(name, **arguments)
        group.create_array("status", shape=(n_rows,), chunks=(chunk_rows,), dtype="uint8",
                           fill_value=STATUS_PENDING, dimension_names=("image",),
                           compressors=_CHECKED, attributes=flag_attributes(STATUS_MEANINGS))
        group.create_array("error", shape=(n_rows,), chunks=(chunk_rows,), dtype=str, fill_value="",
                           dimension_names=("image",), compressors=_CHECKED)
        group.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False,
                           dimension_names=("chunk",), compressors=_CHECKED)
        _write_table(group, table, chunk_rows, provenance["label_names"])
        # The attributes go last: a half-made store is not a cxrdask store.
        group.attrs[ATTRS_KEY] = provenance
        # Consolidated metadata (the arrays' metadata in the group's zarr.json) lets xarray
        # and readers on object storage open the store with one request. Arrays' metadata
        # never changes after this; the group's attributes are rewritten with it kept.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            warnings.filterwarnings("ignore", message=f"Object at {LEASE_NAME}", category=UserWarning)
            zarr.consolidate_metadata(store)
        group = zarr.open_group(store=store, mode="r+", zarr_format=3)
        return cls(group, url, storage_options)

    @classmethod
    @storage_options_by_keyword(position=2)
    def open(cls, url: str, *, storage_options: StorageOptions | None = None,
             mode: Literal["r", "r+"] = "r") -> Self:
        """Open an existing store.

        Parameters
        ----------
        url
            The store's folder or URL.
        storage_options
            fsspec options.
        mode
            ``"r"`` to read, ``"r+"`` to write its chunks (extraction workers).

        Returns
        -------
        FeatureStore or PixelStore
            The class it is called on.

        Raises
        ------
        StoreNotFoundError
            No Zarr group at ``url``.
        StoreError
            A Zarr group that is not a cxrdask store, or one of another format version.
        """
        store = zarr_store(url, storage_options, read_only=mode == "r")
        try:
            group = zarr.open_group(store=store, mode=mode, zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
            raise StoreNotFoundError(f"no {cls.NOUN} at {url}") from exc
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{url} is not a readable Zarr v3 group: {exc}") from exc
        opened = cls(group, url, storage_options)
        kind = opened.provenance.get("kind", "features")
        if kind != cls.KIND:
            hint = (" (a pixel store: extract features from it with source=, --source)"
                    if kind == "pixels" else "")
            raise StoreKindError(f"{url} is a cxrdask {kind} store, not a {cls.KIND} store{hint}", kind)
        version = opened.provenance.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{url} is a cxrdask store of format {version}; this version "
                f"({__version__}) reads format {FORMAT_VERSION}"
            )
        return opened

    @classmethod
    def exists(cls, url: str, storage_options: StorageOptions | None = None) -> bool:
        fs, path = filesystem(url, storage_options)
        return fs.exists(f"{path.rstrip('/')}/zarr.json")

    def check_settings(self, wanted: dict) -> None:
        """Refuse (StoreMismatchError naming each setting) if ``wanted`` differs from the
        store's, for the settings of :attr:`SETTINGS` that ``wanted`` names."""
        differences = {}
        for key in self.SETTINGS:
            mine = self.provenance.get(key, self.SETTING_DEFAULTS.get(key))
            if key in wanted and _normal(mine) != _normal(wanted[key]):
                differences[key] = (mine, wanted[key])
        if differences:
            raise StoreMismatchError(self.url, differences)

    # ------------------------------------------------------------------ shape

    @property
    def label_names(self) -> tuple[str, ...]:
        """The store's findings, in its ``labels`` columns' order (NIH's 14, or its archive's)."""
        return tuple(self.provenance["label_names"])

    @property
    def n_rows(self) -> int:
        return int(self.provenance["n_rows"])

    @property
    def chunk_rows(self) -> int:
        return int(self.provenance["chunk_rows"])

    @property
    def n_chunks(self) -> int:
        return int(self.provenance["n_chunks"])

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Row range ``[start, stop)`` of chunk number ``chunk``."""
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    # ------------------------------------------------------------------ reading

    def array(self, name: str) -> zarr.Array:
        """One of the store's Zarr arrays by name (``features``, ``status``, ``labels``, ...)."""
        node = self.group[name]
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.url}: {name!r} is not an array")
        return node

    def read(self, name: str, selection: Any = slice(None)) -> np.ndarray:
        """``selection`` of the array ``name`` as a NumPy array (the whole array by default).

        Raises
        ------
        CorruptChunkError
            A chunk read fails its checksum or cannot be decoded; the error names it.
        """
        if name == "split" and self._splits is not None:  # with_splits': this object's own
            return np.asarray(self._splits[selection])
        array = self.array(name)
        try:
            return np.asarray(array[selection])
        except Exception as exc:  # zarr raises ValueError/RuntimeError from its codecs
            raise self._corrupt(name, selection, exc) from exc

    def _corrupt(self, name: str, selection: Any, exc: Exception) -> CorruptChunkError:
        """The error for a failed read, naming the chunk (found by reading chunk by chunk)."""
        array = self.array(name)
        step = array.chunks[0]
        start = selection.start or 0 if isinstance(selection, slice) else 0
        stop = selection.stop or array.shape[0] if isinstance(selection, slice) else array.shape[0]
        for first in range(start - start % step, stop, step):
            try:
                array[first:first + step]
            except Exception as inner:  # the bad one
                return CorruptChunkError(self.url, name, first // step, str(inner))
        return CorruptChunkError(self.url, name, None, str(exc))

    def verify(self, arrays: tuple[str, ...] | None = None, chunks=None) -> pd.DataFrame:
        """Read every written chunk of ``arrays`` (of the store chunks ``chunks``; all by
        default) and list the corrupt or missing ones.

        A chunk is *corrupt* when it fails its checksum or cannot be decoded, and *missing*
        when its done marker is set but its data is absent. Nothing is changed; clear the
        markers of the chunks found with :meth:`forget_chunks` and a resumed extraction
        recomputes them.

        Returns
        -------
        pandas.DataFrame
            One row per problem: ``chunk`` (store chunk number), ``array``, ``problem``
            (``corrupt`` or ``missing``) and ``detail``.
        """
        arrays = arrays or (self.DATA_ARRAY, "status", "error", "done")
        problems: list[dict[str, Any]] = []
        try:
            done = self.done_chunks()
        except CorruptChunkError:  # read marker by marker below
            done = np.ones(self.n_chunks, dtype=bool)
        present = self._chunk_keys()
        for name in arrays:
            array = self.array(name)
            step = array.chunks[0]
            written: list[tuple[int, str, slice]] = []
            for chunk in range(self.n_chunks) if chunks is None else sorted({int(c) for c in chunks}):
                start, stop = (chunk, chunk + 1) if name == "done" else self.chunk_bounds(chunk)
                index = start // step
                key = f"{name}/c/{index}" + "/0" * (array.ndim - 1)
                if key in present:
                    written.append((chunk, key, slice(start, stop)))
                elif done[chunk] and self._must_exist(name, chunk):
                    problems.append({"chunk": chunk, "array": name, "problem": "missing",
                                     "detail": f"{key} is absent but the chunk is marked done"})
            problems.extend({"chunk": chunk, "array": name, "problem": "corrupt", "detail": detail}
                            for chunk, detail in self._corrupt_chunks(array, written))
        import pandas as pd

        return pd.DataFrame(problems, columns=["chunk", "array", "problem", "detail"])

    def _corrupt_chunks(self, array: zarr.Array, written: list[tuple[int, str, slice]]
                        ) -> Iterator[tuple[int, str]]:
        """(chunk, why) for each of the ``written`` chunks of ``array`` (chunk, key, rows)
        that fails its check.

        Where the array is unsharded and its codecs end with a crc32c (every array tasks
        write), the check is that checksum on the chunk's stored bytes, as zarr checks it
        when it reads, without the decompression: a million-row store's features (4 GB)
        took 4.6 s to decode on 2 workers for a resume that only asks whether any chunk
        changed since it was written. Bytes that match the checksum they were written with
        decode as they did then. Otherwise each chunk is decoded, as a read would."""
        compressors = array.compressors
        if array.shards is not None or not compressors or not isinstance(compressors[-1], Crc32cCodec):
            for chunk, _, rows in written:
                try:
                    array[rows]
                except Exception as exc:
                    yield chunk, str(exc)
            return
        fs, path = filesystem(self.url, self.storage_options)
        for at in range(0, len(written), _CHUNKS_READ_AT_ONCE):
            block = written[at:at + _CHUNKS_READ_AT_ONCE]
            paths = [f"{path.rstrip('/')}/{key}" for _, key, _ in block]
            stored = fs.cat(paths, on_error="return")
            for (chunk, key, _), chunk_path in zip(block, paths, strict=True):
                data = stored.get(chunk_path)
                if not isinstance(data, bytes):
                    yield chunk, f"{key} could not be read: {data}"
                elif len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
                    yield chunk, f"{key}: its bytes do not match the crc32c checksum stored with them"

    def _must_exist(self, name: str, chunk: int) -> bool:
        """Whether a done chunk of ``name`` must have been written. Zarr skips chunks that
        equal the fill value: ``error`` when no row failed, ``features`` when all did; a
        ``status`` chunk (never all pending once done) always exists."""
        if name == "status":
            return True
        if name == self.DATA_ARRAY:
            start, stop = self.chunk_bounds(chunk)
            try:
                return bool(np.any(np.asarray(self.array("status")[start:stop]) == STATUS_OK))
            except Exception:  # status itself damaged: reported on its own row
                return False
        return False

    def _chunk_keys(self) -> set[str]:
        """The store's chunk keys that exist (one listing)."""
        fs, path = filesystem(self.url, self.storage_options)
        base = path.rstrip("/") + "/"
        return {p[len(base):] for p in find_files(fs, base) if "/c/" in p[len(base):]}

    def forget_chunks(self, chunks) -> None:
        """Clear the done markers of ``chunks``, so the next (resumed) extraction recomputes
        them: each marker's object is deleted (a cleared marker is an absent one, whatever
        zarr's settings, see :meth:`done_chunks`)."""
        fs, path = filesystem(self.url, self.storage_options)
        for chunk in sorted({int(c) for c in chunks}):
            self.array("done")[chunk] = False
            key = f"{path.rstrip('/')}/done/c/{chunk}"
            if fs.exists(key):
                fs.rm(key)
        fs.invalidate_cache(f"{path.rstrip('/')}/done/c")

    def table(self, columns=None) -> pd.DataFrame:
        """Per-row columns (no features): image index, patient, demographics, split, status,
        and a column per finding (uint8 0/1; float32 with NaN where the archive leaves labels
        missing)."""
        names = columns or [*TABLE_ARRAYS, "split", "status", "labels"]
        frame = {}
        for name in names:
            if name == "labels":
                labels = self.read("labels")
                if (labels == MISSING).any():
                    labels = float_labels(labels)
                for position, label in enumerate(self.label_names):
                    frame[label] = labels[:, position]
            else:
                frame[name] = self.read(name)
        import pandas as pd  # not at the top: a worker writing chunks never needs it (0.3 s)

        return pd.DataFrame(frame)

    def rows(self, split: str | int | None = None, ok_only: bool = True) -> np.ndarray:
        """Row numbers of one split (every row if None or ``"all"``), by default only rows
        whose image was read."""
        keep = np.ones(self.n_rows, dtype=bool)
        if split is not None:
            from cxrdask.archive.splits import in_split

            keep &= in_split(self.read("split"), split)
        if ok_only:
            keep &= self.read("status") == STATUS_OK
        return np.flatnonzero(keep)

    def done_chunks(self) -> np.ndarray:
        """Boolean per chunk: True where the chunk's marker (written last) is set.

        A set marker is an object under ``done/c/``; a cleared one is none (zarr leaves out
        a chunk equal to its fill value, False, and :meth:`forget_chunks` deletes it). So one
        listing answers for every chunk: on object storage ceil(chunks / 1,000) LIST
        requests rather than a GET a chunk (1,954 at a million rows). ``verify`` still reads
        every marker."""
        fs, path = filesystem(self.url, self.storage_options)
        base = f"{path.rstrip('/')}/done/c"
        fs.invalidate_cache(base)  # another process may have written markers since
        try:
            names = fs.ls(base, detail=False)
        except FileNotFoundError:  # no marker set yet
            names = []
        done = np.zeros(self.n_chunks, dtype=bool)
        chunks = [int(name.rstrip("/").rsplit("/", 1)[1]) for name in names]
        done[[chunk for chunk in chunks if chunk < self.n_chunks]] = True
        return done

    def is_complete(self) -> bool:
        return bool(self.done_chunks().all())

    def failures(self) -> pd.DataFrame:
        """Rows whose image could not be read: image index, row number and reason."""
        import pandas as pd

        status = self.read("status")
        rows = np.flatnonzero(status == STATUS_FAILED)
        if len(rows) == 0:
            return pd.DataFrame({"row": [], "image_index": [], "reason": []})
        names = self.array("image_index").get_coordinate_selection(rows)
        reasons = self.array("error").get_coordinate_selection(rows)
        return pd.DataFrame({"row": rows, "image_index": names, "reason": reasons})

    def split_counts(self, ok_only: bool = False) -> dict[str, int]:
        """Rows per split (with ``ok_only``: rows whose image was read)."""
        from cxrdask.archive.splits import SPLIT_NAMES

        codes = self.read("split")
        if ok_only:
            codes = codes[self.read("status") == STATUS_OK]
        return {name: int((codes == code).sum()) for code, name in enumerate(SPLIT_NAMES)}

    def update_provenance(self, **values: Any) -> None:
        """Merge values into the provenance attributes (the client alone calls this)."""
        self.provenance.update(values)
        self.group.attrs[ATTRS_KEY] = self.provenance


def _normal(value: Any) -> Any:
    """JSON round trip, so tuples and lists (and numpy scalars) compare equal."""
    return json.loads(json.dumps(value, default=str))


def _write_table(group: zarr.Group, table: pd.DataFrame, chunk_rows: int, names) -> None:
    """The per-row table, written once: the ``image`` and ``finding`` coordinates, the
    metadata columns (:data:`TABLE_ARRAYS`), the labels and the split codes (each with the
    CF flag attributes that decode it)."""
    n_rows = len(table)
    table_chunks = chunk_rows  # aligned with features: a training read touches one chunk each
    # Written once, by the client, whole: many chunks to an object (Zarr v3 sharding), so a
    # million-row store is not thousands of small objects per column (a read of one chunk is
    # one ranged read of its shard). Stores made before keep their unsharded arrays, read
    # as ever.
    shards = (table_chunks * max(1, min(TABLE_SHARD_CHUNKS, -(-n_rows // table_chunks))),)
    image_index = table["image_index"].to_numpy().astype(str)
    coordinate = group.create_array("image", shape=(n_rows,), chunks=(table_chunks,), dtype=str,
                                    shards=shards, dimension_names=("image",))
    coordinate[:] = image_index
    findings = group.create_array("finding", shape=(len(names),), dtype=str,
                                  dimension_names=("finding",))
    findings[:] = np.asarray(names, dtype=str)
    for name, (column, array_dtype) in TABLE_ARRAYS.items():
        values = table[column].to_numpy()
        values = values.astype(str) if array_dtype is str else values.astype(array_dtype)
        array = group.create_array(name, shape=(n_rows,), chunks=(table_chunks,),
                                   shards=shards, dtype=array_dtype, dimension_names=("image",))
        array[:] = values
    # 1 positive, 0 negative, MISSING (255) where the archive gives no label.
    labels = group.create_array("labels", shape=(n_rows, len(names)),
                                chunks=(table_chunks, len(names)), dtype="uint8",
                                shards=(shards[0], len(names)),
                                fill_value=MISSING, dimension_names=("image", "finding"),
                                attributes={"missing": MISSING, **flag_attributes(
                                    {0: "negative", 1: "positive", MISSING: "missing"})})
    labels[:] = label_matrix(table, names)
    from cxrdask.archive.splits import SPLIT_NAMES

    splits = group.create_array("split", shape=(n_rows,), chunks=(table_chunks,), dtype="uint8",
                                shards=shards, dimension_names=("image",),
                                attributes=flag_attributes(SPLIT_NAMES))
    splits[:] = table["split"].to_numpy(dtype=np.uint8)


__all__ = [
    "ATTRS_KEY",
    "DEFAULT_CHUNK_ROWS",
    "FORMAT_VERSION",
    "ROW_SETTINGS",
    "STATUS_FAILED",
    "STATUS_MEANINGS",
    "STATUS_OK",
    "STATUS_PENDING",
    "TABLE_ARRAYS",
    "TABLE_SHARD_CHUNKS",
    "RowStore",
    "common_provenance",
    "flag_attributes",
    "rows_fingerprint",
    "zarr_store",
]
