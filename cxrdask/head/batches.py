"""Out-of-core training batches read lazily from a feature store.

Chunk order is shuffled per epoch, rows are shuffled inside a buffer of a few chunks, and a
background thread reads, decompresses, converts and shuffles the next buffers while the
model trains. Feature memory is bounded by about three buffers (``buffer_chunks`` chunks
each), never by N; per-row labels and demographics (22 bytes a row) are read once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from functools import cached_property

import numpy as np
import torch

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import float_labels
from cxrdask.archive.splits import ALL, in_split, split_code
from cxrdask.archive.views import Views, check_views, view_mask
from cxrdask.head.batch_plan import BatchPlan
from cxrdask.head.encoding import DEFAULT_DEMOGRAPHICS, encode_inputs
from cxrdask.store.features import STATUS_OK, FeatureStore, open_store


def readable_rows(store: FeatureStore, split: str | int, views: Views = "all") -> np.ndarray:
    """A mask of ``store``'s readable rows of ``split`` (a name, a code or ``all``) and
    ``views``: the rows a reader of that split gives, before any are left out."""
    code = split if isinstance(split, str) and split.lower() == ALL else split_code(split)
    keep = in_split(store.read("split"), code) & (store.read("status") == STATUS_OK)
    if views != "all":
        keep &= view_mask(store.read("view"), views)
    return keep


class FeatureBatches(torch.utils.data.IterableDataset):
    """``(inputs, targets)`` float32 batches of one split, read chunk by chunk from the store.

    Chunk order is shuffled per epoch and rows are shuffled inside a buffer of
    ``buffer_chunks`` chunks, read by a background thread: feature memory stays at a few
    buffers whatever the store's size. Usable directly (``for x, y in batches``) or as a
    DataLoader dataset with ``batch_size=None``: with ``num_workers > 0`` (and across
    ``torch.distributed`` ranks) the chunks are shared out, so every row comes once per epoch.

    Parameters
    ----------
    store
        A :class:`FeatureStore` or its URL.
    split
        ``"train"``, ``"validation"``, ``"test"`` or its code; or ``"all"``: every row
        (an external store scored whole).
    batch_size
        Rows per batch.
    shuffle
        Shuffle chunks and rows (training); False reads in store order.
    seed
        Seed of the shuffles (epoch ``e`` uses ``seed + e``).
    buffer_chunks
        Chunks held and shuffled together.
    demographics
        Inputs after the features: ``age``, ``sex``, ``view`` (2018: age and sex).
    drop_last
        Leave out a last, smaller batch.
    storage_options
        fsspec options.
    views
        Which rows by view (:mod:`cxrdask.archive.views`): ``"all"`` (default), ``"frontal"``,
        or a list of families or views.
    label_columns
        The targets' layout when several stores train one head: for each of the head's
        findings, this store's label column, or -1 where the store does not label it (then
        missing on every row). None: the store's own findings.
    exclude_rows
        Store rows left out (an evaluation's rows that are images the head trained on).

    Attributes
    ----------
    n_inputs : int
        Features plus demographics (2050 for ResNet50 with age and sex).
    chunks_read, max_rows_held : int
        How much was read, and the most rows held at once.
    """

    def __init__(
        self,
        store: FeatureStore | str,
        split: str | int = "train",
        batch_size: int = 256,
        *,
        shuffle: bool = True,
        seed: int = 0,
        buffer_chunks: int = 4,
        demographics: Sequence[str] = DEFAULT_DEMOGRAPHICS,
        drop_last: bool = False,
        storage_options: StorageOptions | None = None,
        views: Views = "all",
        label_columns: Sequence[int] | None = None,
        exclude_rows: Sequence[int] | np.ndarray | None = None,
    ):
        super().__init__()
        self._store = store
        self.storage_options = storage_options
        self.split = split if isinstance(split, str) and split.lower() == ALL else split_code(split)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.demographics = tuple(demographics)
        self.drop_last = drop_last
        self.views = check_views(views)
        self.label_columns = None if label_columns is None else np.asarray(label_columns, dtype=np.int64)
        self.exclude_rows = None if exclude_rows is None else np.asarray(exclude_rows, dtype=np.int64)
        self.chunks_read = 0
        self.max_rows_held = 0
        # (mean, scale) applied to every batch by the reader thread; None: raw inputs
        self.standardisation: tuple[torch.Tensor, torch.Tensor] | None = None

    # Read at first use, not in the constructor: the store, then the per-row arrays.

    @cached_property
    def store(self) -> FeatureStore:
        return open_store(self._store, self.storage_options)

    @cached_property
    def plan(self) -> BatchPlan:
        """Which chunks and rows make the batches (one byte per row read: split, status)."""
        keep = readable_rows(self.store, self.split, self.views)
        if self.exclude_rows is not None:
            keep[self.exclude_rows] = False
        return BatchPlan(keep, self.store.chunk_rows, self.batch_size, self.shuffle, self.seed,
                         self.buffer_chunks, self.drop_last)

    @cached_property
    def _rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Encoded demographics and labels of every row (22 bytes a row, 2.5 MB for all of
        NIH), read once: one zarr call per chunk for them would cost more than the features'
        read. Features, 4 KB a row, are only ever held a buffer at a time."""
        view = self.store.read("view") if "view" in self.demographics else None
        extra = encode_inputs(np.zeros((self.store.n_rows, 0), np.float32),
                              self.store.read("age"), self.store.read("sex"), view,
                              self.demographics)
        return extra, self.store.read("labels")

    @property
    def n_rows(self) -> int:
        return self.plan.n_rows

    @property
    def chunk_ids(self) -> np.ndarray:
        return self.plan.chunk_ids

    def standardise(self, mean, scale) -> None:
        """Yield ``(inputs - mean) * scale``, computed in the reader thread, off the training path."""
        self.standardisation = (torch.as_tensor(mean, dtype=torch.float32),
                                torch.as_tensor(scale, dtype=torch.float32))

    @property
    def n_inputs(self) -> int:
        return self.store.feature_dim + len(self.demographics)

    @property
    def feature_dim(self) -> int:
        return self.store.feature_dim

    @property
    def n_targets(self) -> int:
        """Findings in a target row: the store's, or the head's (``label_columns``)."""
        return len(self.store.label_names if self.label_columns is None else self.label_columns)

    @property
    def row_bound(self) -> int:
        """The most rows held in the shuffle buffer at once."""
        return self.plan.row_bound

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Use a different (seeded) chunk and row order for each epoch."""
        self.epoch = epoch

    def read_chunk(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of this split's readable rows in one chunk (float32 tensors)."""
        start, stop, keep = self.plan.rows_of(chunk)
        extra, labels = self._rows
        features = self.store.read("features", slice(start, stop))
        if not keep.all():
            features = features[keep]
        dim = features.shape[1]
        inputs = torch.empty((len(features), dim + extra.shape[1]), dtype=torch.float32)
        inputs[:, :dim].copy_(torch.from_numpy(features))  # SIMD float16 -> float32, in place
        inputs[:, dim:].copy_(torch.from_numpy(extra[start:stop][keep]))
        if self.standardisation is not None:
            mean, scale = self.standardisation
            inputs.sub_(mean).mul_(scale)
        targets = torch.from_numpy(self._targets(labels[start:stop][keep]))  # NaN: missing
        self.chunks_read += 1
        return inputs, targets

    def _targets(self, labels: np.ndarray) -> np.ndarray:
        """Float targets (NaN missing), in the head's findings where ``label_columns`` says."""
        own = float_labels(labels)
        if self.label_columns is None:
            return own
        out = np.full((len(own), len(self.label_columns)), np.nan, dtype=np.float32)
        found = self.label_columns >= 0
        out[:, found] = own[:, self.label_columns[found]]
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches made by a background thread (read, convert, shuffle), so training never waits
        on the store while the reader keeps no more than a couple of buffers ahead."""
        rng = self.plan.epoch_rng(self.epoch)
        order = self.plan.chunk_order(rng, *_reader_share())
        ahead = max(2, 2 * self.buffer_chunks * self.store.chunk_rows // self.batch_size)
        return _in_background(self._batches(order, rng), ahead)

    def _batches(self, order: np.ndarray, rng: np.random.Generator):
        held_x: list[torch.Tensor] = []
        held_y: list[torch.Tensor] = []
        chunks_held = 0
        for chunk in order:
            inputs, targets = self.read_chunk(int(chunk))
            held_x.append(inputs)
            held_y.append(targets)
            chunks_held += 1
            if chunks_held == self.buffer_chunks:  # a full buffer (plus < one batch carried over)
                carry = yield from self._emit(held_x, held_y, rng, final=False)
                held_x, held_y, chunks_held = [carry[0]], [carry[1]], 0
        if held_x:
            yield from self._emit(held_x, held_y, rng, final=True)

    def _emit(self, held_x, held_y, rng, final: bool):
        """Shuffle the buffer, yield its full batches, return the remainder to carry over."""
        x = torch.cat(held_x) if len(held_x) > 1 else held_x[0]
        y = torch.cat(held_y) if len(held_y) > 1 else held_y[0]
        self.max_rows_held = max(self.max_rows_held, len(x))
        if self.shuffle:
            permutation = torch.from_numpy(rng.permutation(len(x)))
            x, y = x[permutation], y[permutation]
        n_full = len(x) // self.batch_size * self.batch_size
        for i in range(0, n_full, self.batch_size):
            yield x[i:i + self.batch_size], y[i:i + self.batch_size]
        if final:
            if n_full < len(x) and not self.drop_last:
                yield x[n_full:], y[n_full:]
            return None
        return x[n_full:], y[n_full:]


def _reader_share() -> tuple[int, int]:
    """``(parts, index)``: how many readers share the chunks (``torch.distributed`` ranks x
    DataLoader workers) and which one this is (see :meth:`BatchPlan.chunk_order`)."""
    parts, index = 1, 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts, index = torch.distributed.get_world_size(), torch.distributed.get_rank()
    worker = torch.utils.data.get_worker_info()
    if worker is not None:
        parts, index = parts * worker.num_workers, index * worker.num_workers + worker.id
    return parts, index


def _in_background(items: Iterator, ahead: int) -> Iterator:
    """Run a generator in a daemon thread, at most ``ahead`` items in front of the consumer."""
    pipe: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                pipe.put(item)
            pipe.put(end)
        except BaseException as exc:  # surfaced in the consumer
            pipe.put(exc)

    thread = threading.Thread(target=produce, name="cxrdask-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = pipe.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                pipe.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def label_counts(store: FeatureStore, split: str | int = "train", views: Views = "all"
                 ) -> tuple[int, np.ndarray, np.ndarray]:
    """Rows, and per-finding positives and negatives of a split (a missing label is neither)
    among the rows ``views`` keeps, counted in one pass over the labels only."""
    keep = (store.read("split") == split_code(split)) & (store.read("status") == STATUS_OK)
    if views != "all":
        keep &= view_mask(store.read("view"), views)
    labels = store.array("labels")
    positives = np.zeros(labels.shape[1], dtype=np.int64)
    negatives = np.zeros(labels.shape[1], dtype=np.int64)
    step = labels.chunks[0]
    for start in range(0, store.n_rows, step):
        rows = keep[start:start + step]
        if rows.any():
            block = np.asarray(labels[start:start + step])[rows]
            positives += (block == 1).sum(axis=0, dtype=np.int64)
            negatives += (block == 0).sum(axis=0, dtype=np.int64)
    return int(keep.sum()), positives, negatives


__all__ = ["FeatureBatches", "label_counts", "open_store", "readable_rows"]
