"""Several feature stores read as one, for one head: the union of their findings, each store's
rows with targets laid out in it (missing where a store's archive does not label a finding),
and their batches interleaved.

The field's multi-archive models (torchxrayvision's ``all`` networks: NIH, CheXpert, MIMIC,
PadChest, ...) train this way. Each store keeps its own train and validation split and is read
lazily by its own :class:`~cxrdask.head.batches.FeatureBatches`, with its share of the shuffle
buffer, so memory stays about what one store's reader holds. Rows are drawn in proportion to
the stores' sizes (``balance="rows"``), or each archive gets an equal share of every epoch
(``balance="archive"``: a small store's rows come round more than once an epoch, a large one's
in turn across epochs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from cxrdask.archive.findings import finding_columns, finding_key
from cxrdask.choices import Balance, values_of
from cxrdask.errors import StoreMismatchError
from cxrdask.head.batches import FeatureBatches
from cxrdask.store.features import FeatureStore

BALANCES: tuple[str, ...] = values_of(Balance)


def union_findings(stores: Sequence[FeatureStore]) -> list[str]:
    """Every finding any store labels, once (matched by harmonised name, any case), in the
    order the stores first name them."""
    seen: dict[str, str] = {}
    for store in stores:
        for name in store.label_names:
            seen.setdefault(finding_key(name), name)
    return list(seen.values())


def label_columns(store: FeatureStore, findings: Sequence[str]) -> list[int]:
    """For each of ``findings``, the store's label column of it, or -1 where it has none."""
    return [-1 if k is None else k for k in finding_columns(store.label_names, findings)]


def check_same_features(stores: Sequence[FeatureStore]) -> None:
    """One head reads one kind of features: every store must have the first's backbone (its
    identity), preprocessing and feature dimension. Refused before any chunk is read,
    naming the first difference."""
    first = stores[0]
    for store in stores[1:]:
        differences = {}
        for key in ("backbone", "preprocessing"):
            if store.provenance.get(key) != first.provenance.get(key):
                differences[key] = (store.provenance.get(key), first.provenance.get(key))
        if store.feature_dim != first.feature_dim:
            differences["feature_dim"] = (store.feature_dim, first.feature_dim)
        if differences:
            raise StoreMismatchError(store.url, {
                f"{key} (the first store, {first.url}, has the other)": pair
                for key, pair in differences.items()})


class MultiStoreBatches:
    """One split's batches of several stores, as one reader (the interface of
    :class:`~cxrdask.head.batches.FeatureBatches` that training and
    :class:`~cxrdask.head.resident.ResidentBatches` use).

    Parameters
    ----------
    parts
        One reader per store, each with ``label_columns`` laying its targets out in the
        same findings.
    shuffle
        Interleave the stores' batches in a seeded random order (training); False reads the
        stores one after the other (validation).
    balance
        ``"rows"``: each store's batches in proportion to its rows; ``"archive"``: an equal
        number of batches from each store every epoch.
    seed
        Seed of the interleaving (epoch ``e`` uses ``seed`` and ``e``).
    """

    def __init__(self, parts: Sequence[FeatureBatches], *, shuffle: bool, balance: Balance = "rows",
                 seed: int = 0):
        if balance not in BALANCES:
            from cxrdask.errors import OptionError

            raise OptionError(f"balance must be one of {', '.join(BALANCES)}, not {balance!r}")
        self.parts = list(parts)
        self.shuffle = shuffle
        self.balance = balance
        self.seed = seed
        self.epoch = 0

    @property
    def n_rows(self) -> int:
        return sum(part.n_rows for part in self.parts)

    @property
    def batch_size(self) -> int:
        return self.parts[0].batch_size

    @property
    def n_inputs(self) -> int:
        return self.parts[0].n_inputs

    @property
    def feature_dim(self) -> int:
        return self.parts[0].feature_dim

    @property
    def n_targets(self) -> int:
        return self.parts[0].n_targets

    @property
    def row_bound(self) -> int:
        return sum(part.row_bound for part in self.parts)

    @property
    def chunks_read(self) -> int:
        return sum(part.chunks_read for part in self.parts)

    @property
    def standardisation(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.parts[0].standardisation

    @standardisation.setter
    def standardisation(self, value: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        for part in self.parts:
            part.standardisation = value

    def standardise(self, mean, scale) -> None:
        for part in self.parts:
            part.standardise(mean, scale)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for part in self.parts:
            part.set_epoch(epoch)

    def batches_per_store(self) -> list[int]:
        """Batches each store gives an epoch (what ``balance`` decides)."""
        own = [len(part) for part in self.parts]
        if self.balance == "rows" or not self.shuffle:
            return own
        share = math.ceil(sum(own) / len(own))
        return [share if n else 0 for n in own]

    def __len__(self) -> int:
        return sum(self.batches_per_store())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.shuffle:
            for part in self.parts:
                yield from part
            return
        counts = self.batches_per_store()
        rng = np.random.default_rng([self.seed, self.epoch, 17])
        order = rng.permutation(np.repeat(np.arange(len(self.parts)), counts))
        readers: list[Iterator | None] = [None] * len(self.parts)
        rounds = [0] * len(self.parts)
        try:
            for k in order:
                batch = None
                while batch is None:
                    if readers[k] is None:  # a store's next pass (again within the epoch when balanced)
                        self.parts[k].set_epoch(self.epoch * 1009 + rounds[k])
                        rounds[k] += 1
                        readers[k] = iter(self.parts[k])
                    batch = next(readers[k], None)
                    if batch is None:
                        readers[k] = None
                yield batch
        finally:
            for reader in readers:  # a store not read to its end stops its reader thread
                close = getattr(reader, "close", None)
                if close is not None:
                    close()


def part_buffer_chunks(buffer_chunks: int, stores: int) -> int:
    """Each store's share of the shuffle buffer, so that several stores hold about what one
    store's reader would."""
    return max(1, math.ceil(buffer_chunks / stores))


__all__ = ["BALANCES", "Balance", "MultiStoreBatches", "check_same_features", "label_columns",
           "part_buffer_chunks", "union_findings"]
