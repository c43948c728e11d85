"""Subgroups of a split (sex, age band, view position) and the under-diagnosis rate.

Audits of chest X-ray classifiers (Seyyed-Kalantari et al., "Underdiagnosis bias of
artificial intelligence algorithms applied to chest radiographs in under-served patient
populations", Nature Medicine 27, 2021) compare AUCs across subgroups and the rate at which
images *with* a finding are called "No Finding". Our head has no "No Finding" output, so
an image is called "No Finding" when no disease reaches its operating threshold (chosen
on the validation split, see :mod:`cxrdask.evaluation.calibration`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

AGE_BANDS = ((0, 19), (20, 39), (40, 59), (60, 79), (80, None))


def age_band_name(low: int, high: int | None) -> str:
    return f"age {low}-{high}" if high is not None else f"age {low}+"


def subgroup_masks(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean masks over the rows of ``table`` (columns ``sex``, ``age``, ``view``): the
    whole split first, then each sex, age band and view position present in it."""
    masks: dict[str, np.ndarray] = {"all": np.ones(len(table), dtype=bool)}
    for sex in ("M", "F"):
        masks[f"sex {sex}"] = (table["sex"] == sex).to_numpy()
    age = table["age"].to_numpy()
    for low, high in AGE_BANDS:
        upper = np.inf if high is None else high
        masks[age_band_name(low, high)] = (age >= low) & (age <= upper)
    for view in ("PA", "AP"):
        masks[f"view {view}"] = (table["view"] == view).to_numpy()
    return {name: mask for name, mask in masks.items() if mask.any()}


def underdiagnosis_rate(targets: np.ndarray, probabilities: np.ndarray,
                        thresholds: np.ndarray) -> float:
    """Among images with at least one finding, the share called "No Finding" (no disease
    at or above its threshold; diseases without a threshold are not called).

    NaN (missing, not 100%) when no image has a finding or no disease has a threshold (no
    validation split to choose them on): with no threshold nothing could be called, and a
    rate of 1.0 would report a failure the head never had a chance to avoid."""
    has_finding = np.asarray(targets, dtype=bool).any(axis=1)
    thresholds = np.asarray(thresholds, dtype=float)
    finite = np.isfinite(thresholds)
    if not has_finding.any() or not finite.any():
        return float("nan")
    called = (probabilities[:, finite] >= thresholds[finite]).any(axis=1)
    return float((~called[has_finding]).mean())


def resampled_underdiagnosis(targets: np.ndarray, probabilities: np.ndarray,
                             thresholds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`underdiagnosis_rate` under each row of ``weights`` ``(resamples, images)``: the
    weighted share of images with a finding that no threshold calls; NaN where a resample
    holds no image with a finding, and everywhere where no disease has a threshold."""
    has_finding = np.asarray(targets, dtype=bool).any(axis=1)
    thresholds = np.asarray(thresholds, dtype=float)
    finite = np.isfinite(thresholds)
    if not finite.any():
        return np.full(len(weights), np.nan)
    called = (probabilities[:, finite] >= thresholds[finite]).any(axis=1)
    w = np.asarray(weights, dtype=np.float64)
    with_finding = w @ has_finding.astype(np.float64)
    missed = w @ (has_finding & ~called).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(with_finding > 0, missed / with_finding, np.nan)


__all__ = ["AGE_BANDS", "age_band_name", "resampled_underdiagnosis", "subgroup_masks",
           "underdiagnosis_rate"]
