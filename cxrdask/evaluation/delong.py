"""DeLong's test for two correlated ROC AUCs (the same images scored by two models).

DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated
receiver operating characteristic curves: a nonparametric approach", Biometrics 44(3),
1988; computed with the midrank algorithm of Sun & Xu, "Fast implementation of DeLong's
algorithm...", IEEE Signal Processing Letters 21(11), 2014 (O(n log n), not O(m n)).
No maintained Python package offers it (scikit-learn and SciPy do not), so it lives here,
checked in the tests against the definition's O(m n) placement values and against Hanley
& McNeil's (1982) published worked example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from cxrdask.errors import ScoreError


@dataclass(frozen=True)
class DeLongResult:
    """Two AUCs, their difference's standard error, z and two-sided p-value."""

    auc_a: float
    auc_b: float
    se_difference: float
    z: float
    p_value: float

    @property
    def difference(self) -> float:
        return self.auc_a - self.auc_b


def _placements(positive_scores: np.ndarray, negative_scores: np.ndarray
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and the structural components V10 (per positive) and V01 (per negative)."""
    m, n = len(positive_scores), len(negative_scores)
    both = np.concatenate([positive_scores, negative_scores])
    ranks_all = rankdata(both)  # midranks: ties count one half
    ranks_pos = rankdata(positive_scores)
    ranks_neg = rankdata(negative_scores)
    v10 = (ranks_all[:m] - ranks_pos) / n  # share of negatives below each positive
    v01 = 1.0 - (ranks_all[m:] - ranks_neg) / m  # share of positives above each negative
    auc = float(v10.mean())
    return auc, v10, v01


def checked_scores(targets, *scores) -> tuple[np.ndarray, ...]:
    """``targets`` as booleans and each score array as floats, refused (:class:`ScoreError`)
    where a score is NaN (naming the first rows: NaN would rank as the highest score and
    bias the AUC silently) or where there are fewer than two positive or negative images (no
    variance can be estimated)."""
    positive = np.asarray(targets, dtype=bool)
    arrays = [np.asarray(s, dtype=float) for s in scores]
    for array in arrays:
        bad = np.flatnonzero(np.isnan(array))
        if len(bad):
            raise ScoreError(f"{len(bad)} score(s) are NaN, at rows {bad[:10].tolist()}"
                             + (" ..." if len(bad) > 10 else "") + ": refuse or drop them first")
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ScoreError(f"an AUC's variance needs at least two positive and two negative "
                         f"images (got {m} and {n})")
    return (positive, *arrays)


def auc_variance(targets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """One model's AUC and DeLong's estimate of its variance.

    Raises
    ------
    ScoreError
        A NaN score (rows named), or fewer than two positive or negative images."""
    positive, scores = checked_scores(targets, scores)
    auc, v10, v01 = _placements(scores[positive], scores[~positive])
    return auc, float(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01))


def delong_test(targets: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """DeLong's test of AUC(a) = AUC(b) on the same images (two-sided).

    Raises :class:`~cxrdask.errors.ScoreError` (a ``ValueError``) for a NaN score (rows
    named) or where the images hold fewer than two positives or negatives."""
    positive, scores_a, scores_b = checked_scores(targets, scores_a, scores_b)
    m, n = int(positive.sum()), int((~positive).sum())
    auc_a, v10_a, v01_a = _placements(scores_a[positive], scores_a[~positive])
    auc_b, v10_b, v01_b = _placements(scores_b[positive], scores_b[~positive])
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / m + s01 / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    se = float(np.sqrt(max(variance, 0.0)))
    if se == 0.0:
        z = 0.0 if auc_a == auc_b else float(np.sign(auc_a - auc_b) * np.inf)
    else:
        z = (auc_a - auc_b) / se
    return DeLongResult(auc_a, auc_b, se, float(z), float(2 * norm.sf(abs(z))))


def clustered_delong_test(targets: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                          clusters: np.ndarray) -> DeLongResult:
    """DeLong's test where images come in clusters (several images of one patient), with
    Obuchowski's variance for clustered ROC data (Obuchowski, "Nonparametric analysis of
    clustered ROC curve data", Biometrics 53(2), 1997).

    The AUCs are DeLong's; the variance sums each cluster's structural components before
    taking their spread, so images of one patient, whose scores move together, are not
    counted as independent evidence. With one image per cluster it is close to DeLong's
    (the factor I/(I-1) over clusters instead of 1/(m-1) over images): where every
    patient has one image, use :func:`delong_test`, which equals R's pROC.

    Raises
    ------
    ScoreError
        A NaN score, fewer than two positive or negative images, or fewer than two clusters.
    """
    positive, scores_a, scores_b = checked_scores(targets, scores_a, scores_b)
    _, index = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(index.max()) + 1 if len(index) else 0
    if n_clusters < 2:
        raise ScoreError(f"a clustered variance needs at least two clusters (got {n_clusters})")
    m, n = int(positive.sum()), int((~positive).sum())
    per_cluster = {"m": np.bincount(index[positive], minlength=n_clusters),
                   "n": np.bincount(index[~positive], minlength=n_clusters)}
    centred = []  # per model: cluster sums of V10 and of V01, each minus its expectation
    aucs = []
    for scores in (scores_a, scores_b):
        auc, v10, v01 = _placements(scores[positive], scores[~positive])
        aucs.append(auc)
        centred.append((np.bincount(index[positive], weights=v10, minlength=n_clusters)
                        - per_cluster["m"] * auc,
                        np.bincount(index[~positive], weights=v01, minlength=n_clusters)
                        - per_cluster["n"] * auc))
    factor = n_clusters / (n_clusters - 1)

    def covariance(a: int, b: int) -> float:
        (x10, x01), (y10, y01) = centred[a], centred[b]
        s10 = factor * float(x10 @ y10) / m
        s01 = factor * float(x01 @ y01) / n
        s11 = factor * float(x10 @ y01 + y10 @ x01) / 2
        return s10 / m + s01 / n + 2 * s11 / (m * n)

    variance = covariance(0, 0) + covariance(1, 1) - 2 * covariance(0, 1)
    se = float(np.sqrt(max(variance, 0.0)))
    auc_a, auc_b = aucs
    if se == 0.0:
        z = 0.0 if auc_a == auc_b else float(np.sign(auc_a - auc_b) * np.inf)
    else:
        z = (auc_a - auc_b) / se
    return DeLongResult(auc_a, auc_b, se, float(z), float(2 * norm.sf(abs(z))))


__all__ = ["DeLongResult", "auc_variance", "checked_scores", "clustered_delong_test", "delong_test"]
