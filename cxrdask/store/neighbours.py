"""Similar cases: the stored images nearest to a query in the backbone's feature space.

A radiologist looking at a model's output asks for cases like this one, with their labels.
The index is FAISS's exhaustive inner-product search over the store's readable rows, each
feature vector less the store's mean vector and scaled to unit length, so the score is the
centred cosine similarity (a backbone's raw features are all positive, and their plain
cosine is dominated by what every radiograph shares). The vectors are held in float16
(``IndexScalarQuantizer``, ``QT_fp16``), as the store holds the features: an exhaustive
search reads every vector, so it is bound by memory, and half the bytes is half the time.
Measured on 112,120 rows of 2,048 features on two cores (``benchmarks/bench_neighbours.py``):
float32 (``IndexFlatIP``) 58 ms a query, float16 28 ms with the same top 6 for every query
tried; a PCA to 256 dimensions (11 ms) and HNSW (0.7 ms, after a 75 s build) found a
quarter and a half of them. Exhaustive search needs no training and has no recall to tune.

The index is built chunk by chunk from the store (on a Dask worker when a client is given)
and kept beside it, in ``STORE.neighbours/`` (``index.faiss``, ``index.json``); it records
what it was built from (the store's rows, its finished chunks and its readable rows) and is
built again when the store has changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions, filesystem, join_url
from cxrdask.errors import CxrDaskError, MissingExtraError, OptionError
from cxrdask.store.features import STATUS_OK, FeatureStore, open_store

INDEX_SUFFIX = ".neighbours"
# A query at least this similar to a stored row is that image: the store's features were
# computed in bf16 and kept in float16, a query's in fp32 (the same image measured 0.9995;
# the closest two distinct images of a synthetic archive, 0.97).
SAME_IMAGE = 0.995
INDEX_FORMAT = 2  # 2: float16 vectors


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MissingExtraError("similar cases need FAISS: pip install 'cxrdask[neighbours]'") from None
    return faiss


def index_url(store: FeatureStore) -> str:
    """Where a store's index is kept: beside it, ``STORE.neighbours/``."""
    return store.url.rstrip("/") + INDEX_SUFFIX


def store_state(store: FeatureStore) -> dict[str, Any]:
    """What an index was built from: if any of it differs, the store has changed."""
    status = store.read("status")
    return {"rows_fingerprint": store.provenance.get("rows_fingerprint"),
            "backbone": store.provenance.get("backbone"),
            "done_chunks": int(store.done_chunks().sum()),
            "ok_rows": int((status == STATUS_OK).sum()), "format": INDEX_FORMAT}


@dataclass
class NeighbourIndex:
    """A store's nearest-neighbour index: the FAISS index, the store rows it holds (in index
    order) and the mean vector its features are centred on."""

    index: Any
    rows: np.ndarray
    mean: np.ndarray
    state: dict[str, Any]
    seconds: float = 0.0  # what building it took (0: read from beside the store)
    _catalogue: dict[str, np.ndarray] | None = None

    def catalogue(self, store: FeatureStore) -> dict[str, np.ndarray]:
        """The per-row arrays a query's answer shows (name, patient, split, labels, status),
        read from the store once (a few MB at NIH's size), so a query reads nothing more than
        its own vector: one zarr read is a millisecond or two, and an answer names k rows."""
        if self._catalogue is None:
            self._catalogue = {name: store.read(name) for name in
                               ("image_index", "patient_id", "split", "labels", "status")}
        return self._catalogue

    def unit(self, features: np.ndarray) -> np.ndarray:
        """Features as the index holds them: centred on the store's mean, unit length."""
        centred = np.asarray(features, dtype=np.float32).reshape(-1, self.mean.size) - self.mean
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        return np.ascontiguousarray(centred / np.maximum(norms, 1e-12), dtype=np.float32)

    def search(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest store rows of each query vector, and their similarities."""
        similarity, position = self.index.search(self.unit(features), k)
        found = position >= 0
        rows = np.where(found, self.rows[np.clip(position, 0, None)], -1)
        return rows, np.where(found, similarity, np.nan)


def build_index(store: FeatureStore | str, *, storage_options: StorageOptions | None = None,
                save: bool = True) -> NeighbourIndex:
    """Build the index of ``store``'s readable rows, reading its features a chunk at a time
    (twice: the mean, then the vectors), and keep it beside the store (``save``)."""
    faiss = _faiss()
    store = open_store(store, storage_options)
    started = time.perf_counter()
    ok = store.read("status") == STATUS_OK
    rows = np.flatnonzero(ok)
    if not len(rows):
        raise CxrDaskError(f"{store.url} has no readable rows to index")
    array = store.array("features")
    total = np.zeros(store.feature_dim, dtype=np.float64)
    for chunk in np.unique(rows // store.chunk_rows):
        start, stop = store.chunk_bounds(int(chunk))
        block = np.asarray(array[start:stop], dtype=np.float32)[ok[start:stop]]
        total += block.sum(axis=0, dtype=np.float64)
    mean = (total / len(rows)).astype(np.float32)
    flat16 = faiss.IndexScalarQuantizer(store.feature_dim, faiss.ScalarQuantizer.QT_fp16,
                                        faiss.METRIC_INNER_PRODUCT)
    built = NeighbourIndex(flat16, rows, mean, store_state(store))
    for chunk in np.unique(rows // store.chunk_rows):
        start, stop = store.chunk_bounds(int(chunk))
        built.index.add(built.unit(np.asarray(array[start:stop])[ok[start:stop]]))
    built.seconds = time.perf_counter() - started
    if save:
        _save(built, index_url(store), store.storage_options)
    return built


def _save(built: NeighbourIndex, url: str, storage_options: StorageOptions | None) -> None:
    faiss = _faiss()
    fs, base = filesystem(url, storage_options)
    fs.makedirs(base, exist_ok=True)
    fs.pipe_file(join_url(base, "index.faiss"), faiss.serialize_index(built.index).tobytes())
    fs.pipe_file(join_url(base, "rows.npy"), _npy(built.rows))
    fs.pipe_file(join_url(base, "mean.npy"), _npy(built.mean))
    # written last: an index without it is an unfinished one, built again
    fs.pipe_file(join_url(base, "index.json"), json.dumps(
        {**built.state, "rows": len(built.rows), "seconds": built.seconds}, indent=1).encode())


def _npy(values: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def _load(url: str, storage_options: StorageOptions | None) -> NeighbourIndex | None:
    """The index kept at ``url``; None where there is none (or an unfinished one)."""
    import io

    faiss = _faiss()
    fs, base = filesystem(url, storage_options)
    meta = join_url(base, "index.json")
    if not fs.exists(meta):
        return None
    state = json.loads(fs.cat_file(meta))
    index = faiss.deserialize_index(np.frombuffer(fs.cat_file(join_url(base, "index.faiss")),
                                                  dtype=np.uint8))
    rows = np.load(io.BytesIO(fs.cat_file(join_url(base, "rows.npy"))), allow_pickle=False)
    mean = np.load(io.BytesIO(fs.cat_file(join_url(base, "mean.npy"))), allow_pickle=False)
    state = {k: state[k] for k in ("rows_fingerprint", "backbone", "done_chunks", "ok_rows",
                                   "format") if k in state}
    return NeighbourIndex(index, rows, mean, state)


def open_index(store: FeatureStore | str, *, client=None,
               storage_options: StorageOptions | None = None) -> NeighbourIndex:
    """The store's index: the one kept beside it where it was built from the store as it is
    now, else built again (on ``client``'s cluster when given) and kept."""
    store = open_store(store, storage_options)
    kept = _load(index_url(store), store.storage_options)
    if kept is not None and kept.state == store_state(store):
        return kept
    if client is not None:
        client.submit(_build_task, store.url, store.storage_options, pure=False).result()
        loaded = _load(index_url(store), store.storage_options)
        assert loaded is not None
        return loaded
    return build_index(store)


def _build_task(url: str, storage_options: StorageOptions | None) -> dict:
    """A worker's build: the index written beside the store, its size and time returned."""
    built = build_index(url, storage_options=storage_options)
    return {"rows": len(built.rows), "seconds": built.seconds}


def neighbours(store: FeatureStore | str, query: int | str | np.ndarray, k: int = 5, *,
               index: NeighbourIndex | None = None, client=None,
               storage_options: StorageOptions | None = None) -> pd.DataFrame:
    """The ``k`` stored images most similar to ``query``, most similar first.

    Parameters
    ----------
    store
        A feature store (or its URL).
    query
        A store row (int), a stored image's name (``00000001_000.png``), or a feature
        vector of the store's backbone (an image's, as :func:`image_features` gives).
    k
        How many.
    index
        An index already open (:func:`open_index`); by default the store's own, built
        where it is missing or stale.

    Returns
    -------
    pandas.DataFrame
        ``rank``, ``row``, ``image``, ``patient_id``, ``split``, ``findings`` (the positive
        labels, ``No Finding`` where none), ``similarity`` (centred cosine, 1 the same
        image) and ``distance`` (1 - similarity). A stored row's (or image's) own row comes
        first; ``attrs["query_in_store"]`` names the row a vector query is (a similarity of
        at least :data:`SAME_IMAGE`), or is None.
    """
    from cxrdask.archive.splits import SPLIT_NAMES

    store = open_store(store, storage_options)
    if isinstance(k, bool) or k < 1:
        raise OptionError(f"k is how many similar images, at least 1, not {k!r}")
    index = index or open_index(store, client=client)
    known = index.catalogue(store)
    own_row = _query_row(store, query, known)
    vector = (np.asarray(store.array("features")[own_row], dtype=np.float32)
              if own_row is not None else np.asarray(query, dtype=np.float32))
    if vector.size != store.feature_dim:
        raise OptionError(f"a query vector of {vector.size} values; {store.url} holds "
                          f"{store.feature_dim}-value features of {store.provenance['backbone']['name']}")
    rows, similarity = index.search(vector, min(k + 1, len(index.rows)))
    rows, similarity = rows[0], similarity[0]
    keep = rows >= 0
    rows, similarity = rows[keep], similarity[keep]
    if own_row is not None:  # itself first, whatever ties FAISS broke
        mine = rows == own_row
        rows = np.concatenate([[own_row], rows[~mine]])
        similarity = np.concatenate([[1.0], similarity[~mine]])
    rows, similarity = rows[:k], similarity[:k]
    found = _describe(store, rows, known)
    found.insert(0, "rank", np.arange(1, len(rows) + 1))
    found["split"] = [SPLIT_NAMES[code] if 0 <= code < len(SPLIT_NAMES) else str(code)
                      for code in known["split"][rows]]
    found["similarity"] = similarity.astype(np.float64)
    found["distance"] = 1.0 - found["similarity"]
    found.attrs["query_in_store"] = (own_row if own_row is not None else
                                     (int(rows[0]) if len(rows) and similarity[0] >= SAME_IMAGE
                                      else None))
    return found


def _query_row(store: FeatureStore, query, known: dict[str, np.ndarray]) -> int | None:
    if isinstance(query, (bool, np.bool_)):
        raise OptionError("a query is a row, an image name or a feature vector, not a bool")
    if isinstance(query, (int, np.integer)):
        if not 0 <= int(query) < store.n_rows:
            raise OptionError(f"row {query} is not a row of {store.url} (0 to {store.n_rows - 1})")
        if known["status"][int(query)] != STATUS_OK:
            raise OptionError(f"row {query} of {store.url} has no features (its image failed)")
        return int(query)
    if isinstance(query, str):
        found = np.flatnonzero(known["image_index"] == query)
        if not len(found):
            raise OptionError(f"{query!r} is not an image of {store.url}: give a stored image's "
                              "name, a row, or an image file (cxrdask neighbours STORE FILE)")
        return _query_row(store, int(found[0]), known)
    return None


def _describe(store: FeatureStore, rows: np.ndarray, known: dict[str, np.ndarray]) -> pd.DataFrame:
    """Image, patient and positive findings of ``rows``."""
    from cxrdask.archive.findings import float_labels

    labels = float_labels(known["labels"][rows])
    names = list(store.label_names)
    findings = ["|".join(n for n, v in zip(names, row, strict=True) if v == 1) or "No Finding"
                for row in labels]
    return pd.DataFrame({"row": rows.astype(np.int64), "image": known["image_index"][rows],
                         "patient_id": known["patient_id"][rows], "findings": findings})


__all__ = ["INDEX_SUFFIX", "SAME_IMAGE", "NeighbourIndex", "build_index", "index_url", "neighbours",
           "open_index", "store_state"]
