"""A split kept in memory after one lazy pass, so later epochs wait for no decompression.

The features are kept as the store holds them, float16 (half the memory of float32: 0.3
instead of 0.6 GB for NIH's training split), the few demographic inputs and the targets as
float32; each batch is gathered into two reused buffers, widened to float32 and
standardised there, with the very operations the lazy reader uses
(:meth:`~cxrdask.head.batches.FeatureBatches.read_chunk`), so a resident epoch's inputs
equal a lazy one's bit for bit. On a GPU the kept split lives in GPU memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cxrdask.head.batches import FeatureBatches


def resident_budget_mb(setting: int | str) -> float:
    """The host memory the kept splits may take: ``setting`` MiB, or for ``auto`` half of
    what the machine has available now (psutil's ``available``: free memory and the page
    cache that can be dropped)."""
    if setting != "auto":
        return float(setting)
    import psutil

    return psutil.virtual_memory().available / 2 / 2**20


def keep_where_they_fit(feeds: dict, device: torch.device, setting: int | str, seed: int
                        ) -> dict[str, str]:
    """Replace each split's lazy batches in ``feeds`` (training first) by
    :class:`ResidentBatches` where it fits what the budget has left; returns, per split,
    what was chosen and why (logged by the caller, kept in the training result)."""
    budget = resident_budget_mb(setting)
    chosen = {}
    for name, batches in feeds.items():
        need = ResidentBatches.nbytes(batches) / 2**20
        if ResidentBatches.fits(batches, device, budget):
            feeds[name] = ResidentBatches(batches, device, shuffle=name == "train", seed=seed)
            budget -= 0 if device.type == "cuda" else need
            where = "GPU memory" if device.type == "cuda" else "memory"
            chosen[name] = (f"{batches.n_rows:,} rows kept in {where} after the first epoch "
                            f"(float16 features, {need:,.0f} MiB)")
        else:
            chosen[name] = (f"{batches.n_rows:,} rows read lazily every epoch (kept, they "
                            f"would take {need:,.0f} MiB; {max(budget, 0):,.0f} MiB allowed)")
    return chosen


def to_gpu(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on the GPU: from pinned memory, without blocking the host."""
    return tensor.pin_memory().to(device, non_blocking=True)


class ResidentBatches:
    """A split's batches kept in memory after one lazy pass over its chunks (in GPU memory
    when training on a GPU).

    The first epoch reads the store chunk by chunk as always (the reader thread prepares the
    next buffer while the head trains) and keeps each row; later epochs reshuffle the rows
    in memory. Used only for a split that fits (:meth:`fits`, :func:`keep_where_they_fit`):
    a larger one stays lazy every epoch, and memory stays flat in N.
    """

    def __init__(self, batches: FeatureBatches, device: torch.device, shuffle: bool, seed: int):
        self.batches = batches
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.features: torch.Tensor | None = None  # float16, (rows, feature_dim)
        self.extra: torch.Tensor | None = None  # float32, (rows, demographic inputs)
        self.targets: torch.Tensor | None = None

    @staticmethod
    def nbytes(batches: FeatureBatches) -> int:
        """What the kept split takes: float16 features, float32 demographics and targets."""
        dim = batches.feature_dim
        return batches.n_rows * (2 * dim + 4 * (batches.n_inputs - dim) + 4 * batches.n_targets)

    @classmethod
    def fits(cls, batches: FeatureBatches, device: torch.device, budget_mb: float) -> bool:
        """Whether the kept split fits: ``budget_mb`` of host memory, or on a GPU a quarter
        of its free memory (0 keeps every epoch lazy)."""
        if budget_mb <= 0:
            return False
        need = cls.nbytes(batches)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return need <= 0.25 * free
        return need <= budget_mb * 2**20

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def _standardisation(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        held = self.batches.standardisation
        return None if held is None else (held[0].to(self.device), held[1].to(self.device))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.features is None:
            return self._first_pass()
        return self._from_memory()

    def _first_pass(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The lazy epoch, reading raw inputs (the standardisation is applied here, after
        they are kept) into tensors of the split's full size made before the pass."""
        n, dim = self.batches.n_rows, self.batches.feature_dim
        features = torch.empty((n, dim), dtype=torch.float16, device=self.device)
        extra = torch.empty((n, self.batches.n_inputs - dim), dtype=torch.float32,
                            device=self.device)
        targets = torch.empty((n, self.batches.n_targets), dtype=torch.float32,
                              device=self.device)
        standardisation = self._standardisation()
        held = self.batches.standardisation
        self.batches.standardisation = None
        filled = 0
        try:
            for x, y in self.batches:
                if self.device.type == "cuda":
                    x, y = to_gpu(x, self.device), to_gpu(y, self.device)
                rows = slice(filled, filled + len(x))
                features[rows].copy_(x[:, :dim])  # exact: the store's float16 values
                extra[rows].copy_(x[:, dim:])
                targets[rows].copy_(y)
                filled += len(x)
                if standardisation is not None:
                    x.sub_(standardisation[0]).mul_(standardisation[1])
                yield x, y
        finally:
            self.batches.standardisation = held
        self.features, self.extra, self.targets = features[:filled], extra[:filled], targets[:filled]

    def _from_memory(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Later epochs: each batch gathered into the same buffers, which the step reads
        before the next gather (a fresh tensor a step cost page faults and, with the
        allocator keeping freed blocks, hundreds of MB of resident memory an epoch)."""
        assert self.features is not None and self.extra is not None and self.targets is not None
        n, size, dim = len(self.features), self.batches.batch_size, self.features.shape[1]
        if self.shuffle:
            generator = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, device=self.device, generator=generator)
        else:
            order = torch.arange(n, device=self.device)
        standardisation = self._standardisation()
        halves = self.features.new_empty((size, dim))
        x_out = self.extra.new_empty((size, dim + self.extra.shape[1]))
        y_out = self.targets.new_empty((size, self.targets.shape[1]))
        for start in range(0, n, size):
            rows = order[start:start + size]
            m = len(rows)
            torch.index_select(self.features, 0, rows, out=halves[:m])
            x_out[:m, :dim].copy_(halves[:m])
            torch.index_select(self.extra, 0, rows, out=x_out[:m, dim:])
            if standardisation is not None:
                x_out[:m].sub_(standardisation[0]).mul_(standardisation[1])
            torch.index_select(self.targets, 0, rows, out=y_out[:m])
            yield x_out[:m], y_out[:m]


__all__ = ["ResidentBatches", "keep_where_they_fit", "resident_budget_mb", "to_gpu"]
