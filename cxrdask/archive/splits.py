"""Train / validation / test splits: random by image (2018), by patient, or NIH's official lists.

A random image-level split (the 2018 recipe) puts images of one patient in more than one
split, which leaks and inflates AUC; it is kept only to reproduce that recipe. The
default is the official lists when the archive has them, else a seeded split by patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions, filesystem, join_url
from cxrdask.choices import SPLIT_NAMES
from cxrdask.errors import SplitError

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}
ALL = "all"  # every row, whatever its split
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
OFFICIAL_TRAIN_VAL = "train_val_list.txt"
OFFICIAL_TEST = "test_list.txt"
Method = Literal["auto", "random", "patient", "official"]


@dataclass(frozen=True)
class SplitSpec:
    """How a split was made; stored with the features and printed in every report."""

    method: str
    seed: int
    fractions: tuple[float, float, float]

    archive: str = "nih"

    def describe(self) -> str:
        if self.method == "official" and self.archive == "nih":
            return f"official NIH lists (validation carved by patient, seed {self.seed})"
        if self.method == "official":
            return (f"the {self.archive} archive's published split (validation carved by "
                    f"patient where it publishes none, seed {self.seed})")
        shares = "/".join(f"{round(f * 100)}" for f in self.fractions)
        unit = "image (leaks patients across splits)" if self.method == "random" else "patient"
        return f"{self.method}: {shares} by {unit}, seed {self.seed}"


def split_code(name: str | int) -> int:
    """``"train"`` -> 0, ``"validation"``/``"val"`` -> 1, ``"test"`` -> 2 (ints pass through)."""
    if isinstance(name, (int, np.integer)) and int(name) in (TRAIN, VALIDATION, TEST):
        return int(name)
    aliases = {"val": "validation", "valid": "validation"}
    key = aliases.get(str(name).lower(), str(name).lower())
    if key not in SPLIT_CODES:
        raise SplitError(f"unknown split {name!r}; use one of {', '.join(SPLIT_NAMES)}")
    return SPLIT_CODES[key]


def in_split(codes: np.ndarray, split: str | int | None) -> np.ndarray:
    """Which rows of ``codes`` a split selects: one split, by name or code, or every row
    (``"all"`` or None: an external store, whose every row is unseen)."""
    if split is None or (isinstance(split, str) and split.lower() == ALL):
        return np.ones(len(codes), dtype=bool)
    return np.asarray(codes) == split_code(split)


def _check_fractions(fractions) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise SplitError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    return values[0], values[1], values[2]


def random_split(n_images: int, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """70/10/20 by image, as the 2018 system did (patients leak across splits)."""
    fractions = _check_fractions(fractions)
    order = np.random.default_rng(seed).permutation(n_images)
    cuts = np.round(np.cumsum(fractions)[:2] * n_images).astype(int)
    codes = np.empty(n_images, dtype=np.uint8)
    codes[order[: cuts[0]]] = TRAIN
    codes[order[cuts[0]: cuts[1]]] = VALIDATION
    codes[order[cuts[1]:]] = TEST
    return codes


def patient_split(patient_ids, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> np.ndarray:
    """Split by patient so no patient is in two splits; shares are of images, not patients.

    Patients are shuffled, then cut where the running image count crosses each share,
    so each split is within one patient's images of its target.
    """
    fractions = _check_fractions(fractions)
    patient_ids = np.asarray(patient_ids)
    patients, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(patients))
    running = np.cumsum(counts[order])
    bounds = np.cumsum(fractions)[:2] * len(patient_ids)
    # A patient goes to the split in which its first image would fall.
    starts = running - counts[order]
    code_in_order = np.searchsorted(bounds, starts, side="right").astype(np.uint8)
    code_of_patient = np.empty(len(patients), dtype=np.uint8)
    code_of_patient[order] = code_in_order
    return code_of_patient[inverse]


def _published_split(metadata: pd.DataFrame) -> pd.Series | None:
    """The archive's own split column (CheXpert's valid.csv, MIMIC's split file, VinDr's
    test set), where its table has one for every row."""
    if "official_split" not in metadata.columns:
        return None
    column = metadata["official_split"].fillna("").astype(str)
    return None if column.eq("").any() else column


def published_split(names: pd.Series, patient_ids, seed: int = 0,
                    validation_share: float = 0.125) -> np.ndarray:
    """Codes from an archive's published split: ``train``, ``validation`` and ``test`` as
    named; ``trainval`` rows split into train and validation by patient (as NIH's list)."""
    codes = np.full(len(names), TRAIN, dtype=np.uint8)
    values = names.to_numpy()
    codes[values == "validation"] = VALIDATION
    codes[values == "test"] = TEST
    pooled = np.flatnonzero(values == "trainval")
    if len(pooled):
        codes[pooled] = patient_split(np.asarray(patient_ids)[pooled], seed=seed,
                                      fractions=(1 - validation_share, validation_share, 0.0))
    return codes


def read_official_lists(
    root: str, storage_options: StorageOptions | None = None
) -> tuple[set[str], set[str]] | None:
    """NIH's ``train_val_list.txt`` and ``test_list.txt`` under ``root``, or None if absent."""
    fs, base = filesystem(root, storage_options)
    paths = [join_url(base, OFFICIAL_TRAIN_VAL), join_url(base, OFFICIAL_TEST)]
    if not all(fs.exists(p) for p in paths):
        return None
    lists = []
    for path in paths:
        with fs.open(path, "rt") as handle:
            lists.append({line.strip() for line in handle.read().splitlines()} - {""})
    return lists[0], lists[1]


def official_split(
    image_indices,
    patient_ids,
    train_val: set[str],
    test: set[str],
    seed: int = 0,
    validation_share: float = 0.125,
) -> np.ndarray:
    """Test from ``test_list.txt``; validation carved from ``train_val_list.txt`` by patient.

    ``validation_share`` is the share of the train+val images that goes to validation
    (1/8 gives about 70/10/20 overall on the real lists, whose test share is 22.8%).
    """
    names = pd.Series(np.asarray(image_indices, dtype=object))
    listed = names.tolist()  # set lookups: pandas' isin first copies each set into an array
    in_test = np.fromiter((name in test for name in listed), dtype=bool, count=len(listed))
    in_train_val = np.fromiter((name in train_val for name in listed), dtype=bool, count=len(listed))
    both = np.flatnonzero(in_test & in_train_val)
    neither = np.flatnonzero(~in_test & ~in_train_val)
    for rows, what in ((both, "in both official lists"), (neither, "in neither official list")):
        if len(rows):
            shown = ", ".join(names.iloc[rows[:10]])
            raise SplitError(f"{len(rows)} image(s) {what}: {shown}")
    pooled = pd.Series(np.where(in_test, "test", "trainval"))
    return published_split(pooled, patient_ids, seed=seed, validation_share=validation_share)


def assign_splits(
    metadata: pd.DataFrame,
    method: Method = "auto",
    *,
    seed: int = 0,
    fractions=DEFAULT_FRACTIONS,
    archive_root: str | None = None,
    storage_options: StorageOptions | None = None,
) -> tuple[np.ndarray, SplitSpec]:
    """Split codes per row (0 train, 1 validation, 2 test) and a description of the split.

    Parameters
    ----------
    metadata
        A frame from :func:`read_metadata`.
    method
        ``"official"`` (NIH's lists, validation carved by patient), ``"patient"``, ``"random"``
        (by image, as in 2018: patients leak), or ``"auto"`` (official where the archive has
        the lists, else patient).
    seed
        Seed of the patient or random assignment.
    fractions
        Train, validation and test shares (validation only, for ``official``).
    archive_root
        Where ``train_val_list.txt`` and ``test_list.txt`` are.
    storage_options
        fsspec options.

    Returns
    -------
    tuple of (numpy.ndarray, SplitSpec)
        uint8 codes, and what every report names.

    Raises
    ------
    SplitError
        The method cannot be applied (no lists for ``official``, an image in no list).
    """
    fractions = _check_fractions(fractions)
    published = _published_split(metadata) if method in ("auto", "official") else None
    if published is not None:
        codes = published_split(published, metadata["patient_id"], seed=seed,
                                validation_share=fractions[1] / (fractions[0] + fractions[1]))
        return codes, SplitSpec(method="official", seed=seed, fractions=fractions,
                                archive=str(metadata.attrs.get("archive", "nih")))
    lists = None
    if method in ("auto", "official"):
        lists = read_official_lists(archive_root, storage_options) if archive_root else None
        if lists is None and method == "official":
            raise SplitError(
                f"official split asked for, but {OFFICIAL_TRAIN_VAL} and {OFFICIAL_TEST} "
                f"are not both under {archive_root!r}"
            )
        method = "official" if lists is not None else "patient"
    if method == "official":
        assert lists is not None
        codes = official_split(
            metadata["image_index"], metadata["patient_id"], *lists, seed=seed,
            validation_share=fractions[1] / (fractions[0] + fractions[1]),
        )
    elif method == "patient":
        codes = patient_split(metadata["patient_id"], seed=seed, fractions=fractions)
    elif method == "random":
        codes = random_split(len(metadata), seed=seed, fractions=fractions)
    else:
        raise SplitError(f"unknown split method {method!r}; use auto, random, patient or official")
    return codes, SplitSpec(method=method, seed=seed, fractions=fractions)


__all__ = [
    "DEFAULT_FRACTIONS",
    "OFFICIAL_TEST",
    "OFFICIAL_TRAIN_VAL",
    "SPLIT_CODES",
    "TEST",
    "TRAIN",
    "VALIDATION",
    "Method",
    "SplitSpec",
    "assign_splits",
    "official_split",
    "patient_split",
    "published_split",
    "random_split",
    "read_official_lists",
    "split_code",
]
