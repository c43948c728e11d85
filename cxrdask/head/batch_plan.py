"""Which rows each training batch holds: a NumPy plan, apart from reading and from torch.

A split's readable rows are spread over the store's chunks. Each epoch the plan draws a
(seeded) chunk order, gives each reader (``torch.distributed`` rank x DataLoader worker) an
equal share of it, and groups a share into buffers of ``buffer_chunks`` chunks, whose rows
are shuffled together. The same seed and epoch give every reader the same order, so taking
every ``parts``-th chunk gives disjoint shares and every row comes once per epoch. The plan
reads nothing; :class:`~cxrdask.head.batches.FeatureBatches` reads the chunks it names and
hands torch the batches (as xbatcher keeps its batch generator apart from its torch adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class BatchPlan:
    """The batches of one split: rows kept (``keep``, one bool per store row), the store's
    chunking, and how they are batched and shuffled."""

    keep: np.ndarray
    chunk_rows: int
    batch_size: int = 256
    shuffle: bool = True
    seed: int = 0
    buffer_chunks: int = 4
    drop_last: bool = False

    @cached_property
    def n_rows(self) -> int:
        """Rows of the split whose image was read."""
        return int(self.keep.sum())

    @cached_property
    def chunk_ids(self) -> np.ndarray:
        """The chunks holding at least one of the split's rows, in store order."""
        if len(self.keep) == 0:
            return np.zeros(0, dtype=np.int64)
        per_chunk = np.add.reduceat(self.keep, np.arange(0, len(self.keep), self.chunk_rows))
        return np.flatnonzero(per_chunk > 0)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def row_bound(self) -> int:
        """The most rows a reader holds in its shuffle buffer at once."""
        return self.buffer_chunks * self.chunk_rows + self.batch_size

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        """The epoch's generator: the chunk order is drawn first, then each buffer's rows."""
        return np.random.default_rng([self.seed, epoch])

    def chunk_order(self, rng: np.random.Generator, parts: int = 1, index: int = 0) -> np.ndarray:
        """Reader ``index`` of ``parts``' chunks this epoch (every reader draws the same order)."""
        order = rng.permutation(self.chunk_ids) if self.shuffle else self.chunk_ids
        return order[index::parts]

    def rows_of(self, chunk: int) -> tuple[int, int, np.ndarray]:
        """A chunk's row range ``[start, stop)`` and which of its rows are kept."""
        start = chunk * self.chunk_rows
        stop = min(start + self.chunk_rows, len(self.keep))
        return start, stop, self.keep[start:stop]


__all__ = ["BatchPlan"]
