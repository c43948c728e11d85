"""Confidence intervals for ROC AUCs by a bootstrap over *patients*, vectorised.

NIH's test split has several images of most patients (follow-ups), and images of one
patient are not independent: resampling images would give intervals that are too narrow.
Each resample draws the split's patients with replacement and weights every image by how
many times its patient was drawn; a weighted AUC per resample is then one sort per
disease (shared by every resample), a cumulative sum and a dot product, computed for a
block of resamples at once. Every model and every subgroup is scored on the *same*
resamples, so differences between them (two checkpoints, a subgroup and the whole split)
are paired.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from dask.system import CPU_COUNT

DEFAULT_RESAMPLES = 1000
BLOCK = 200  # resamples weighed at once: BLOCK x images float32 (20 MB for 25,596 images)


def patient_weights(patients: np.ndarray, n_resamples: int, seed: int,
                    block: int = BLOCK) -> Iterator[np.ndarray]:
    """Blocks of per-image weights, ``(resamples, images)`` float32: each resample draws the
    patients with replacement; an image weighs as often as its patient was drawn."""
    codes, n_patients = _codes(patients)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        size = min(block, n_resamples - done)
        counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=size)
        yield counts.astype(np.float32)[:, codes]
        done += size


def stratified_patient_weights(patients: np.ndarray, positive: np.ndarray, n_resamples: int,
                               seed: int, block: int = BLOCK) -> Iterator[np.ndarray]:
    """As :func:`patient_weights`, drawn in two strata: the patients with a positive image of
    the finding and those without, each drawn with replacement as many times as it holds
    patients. Every resample then holds positives and negatives (where the split does):
    pROC's stratified bootstrap (its default for ``ci.auc``), by patient rather than image."""
    codes, n_patients = _codes(patients)
    has_positive = np.zeros(n_patients, dtype=bool)
    np.logical_or.at(has_positive, codes, np.asarray(positive, dtype=bool))
    strata = [members for members in (np.flatnonzero(has_positive), np.flatnonzero(~has_positive))
              if len(members)]
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        size = min(block, n_resamples - done)
        counts = np.zeros((size, n_patients), dtype=np.float32)
        for members in strata:
            counts[:, members] = rng.multinomial(len(members), np.full(len(members),
                                                                      1.0 / len(members)),
                                                 size=size)
        yield counts[:, codes]
        done += size


def _codes(patients: np.ndarray) -> tuple[np.ndarray, int]:
    unique, codes = np.unique(np.asarray(patients), return_inverse=True)
    return codes.ravel(), len(unique)


class RankedScores:
    """One disease's scores on a set of images, sorted once for every resample.

    With the images in score order and ``C`` the running total of a resample's weights,
    the weight of negatives scored below a positive is ``C`` at the start of the
    positive's tie group less the positives' running total there; a tie counts one half.
    So a block of resamples costs one gather and one cumulative sum over the images, and
    small gathers over the positives.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray, members: np.ndarray | None = None):
        order = np.argsort(scores, kind="stable")
        ranked = np.asarray(scores)[order]
        pos = np.asarray(positive, dtype=bool)[order]
        self.index = order if members is None else np.asarray(members)[order]
        self.n = len(order)
        new_group = np.r_[True, ranked[1:] != ranked[:-1]] if self.n else np.zeros(0, bool)
        group_start = np.flatnonzero(new_group)
        group_end = np.r_[group_start[1:], self.n]
        group_of = np.cumsum(new_group) - 1
        self.positives = np.flatnonzero(pos)
        groups = group_of[self.positives]
        self.start, self.end = group_start[groups], group_end[groups]
        positives_before = np.r_[0, np.cumsum(pos)]
        self.pos_start, self.pos_end = positives_before[self.start], positives_before[self.end]

    def aucs(self, weights: np.ndarray) -> np.ndarray:
        """The AUC under each row of ``weights`` ``(resamples, all images)``; NaN where a
        resample holds no positive or no negative image."""
        b, m = len(weights), len(self.positives)
        ranked = weights[:, self.index]
        total = np.zeros((b, self.n + 1), np.float32)  # exact: integer weights < 2**24
        np.cumsum(ranked, axis=1, out=total[:, 1:])
        w_pos = ranked[:, self.positives]
        pos_total = np.zeros((b, m + 1), np.float32)
        np.cumsum(w_pos, axis=1, out=pos_total[:, 1:])
        below = total[:, self.start] - pos_total[:, self.pos_start]
        tied = (total[:, self.end] - total[:, self.start]) - (pos_total[:, self.pos_end]
                                                              - pos_total[:, self.pos_start])
        wins = np.einsum("ij,ij->i", w_pos.astype(np.float64), below + 0.5 * tied.astype(np.float64))
        pairs = pos_total[:, m].astype(np.float64) * (total[:, self.n] - pos_total[:, m])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` against boolean ``positive`` under each row of ``weights``
    ``(resamples, images)``; ties count one half, as in the unweighted AUC.

    The weights are resample counts: whole numbers, summed exactly in float32 below 2**24
    (the bootstrap's inner loop). Other weights are refused rather than rounded."""
    weights = np.asarray(weights, dtype=np.float64)
    if not np.array_equal(weights, np.round(weights)) or weights.min(initial=0) < 0:
        raise ValueError("weights must be resample counts: whole numbers of zero or more")
    return RankedScores(scores, positive).aucs(weights.astype(np.float32))


def bootstrap_aucs(targets: np.ndarray, models: Mapping[str, np.ndarray], patients: np.ndarray,
                   groups: Mapping[str, np.ndarray], *, n_resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0, stratified: bool = False, known: np.ndarray | None = None
                   ) -> dict[tuple[str, str], np.ndarray]:
    """Resampled AUCs: for each (model, group), an array ``(n_resamples, diseases)``.

    ``targets`` is ``(images, diseases)``; each model's probabilities likewise; ``groups``
    maps a name to a boolean mask over images. All are scored on the same resamples (with
    ``stratified``: per disease, patients drawn within the strata of that disease,
    :func:`stratified_patient_weights`; models and groups still share each disease's).
    ``known`` ``(images, diseases)``: score each disease on the images labelled for it only."""
    targets = np.asarray(targets, dtype=bool)
    labelled = np.ones(targets.shape, bool) if known is None else np.asarray(known, bool)
    ranked = {(model, group, k): RankedScores(np.asarray(p)[rows, k], targets[rows, k],
                                              np.flatnonzero(rows))
              for model, p in models.items() for group, mask in groups.items()
              for k in range(targets.shape[1]) for rows in [mask & labelled[:, k]]}
    out = {(m, g): np.empty((n_resamples, targets.shape[1])) for m in models for g in groups}
    diseases: list[list[int]] = ([[k] for k in range(targets.shape[1])] if stratified
                                 else [list(range(targets.shape[1]))])
    for columns in diseases:
        draws = (stratified_patient_weights(patients, targets[:, columns[0]], n_resamples,
                                            int(np.random.SeedSequence([seed, columns[0]])
                                                .generate_state(1)[0]))
                 if stratified else patient_weights(patients, n_resamples, seed))
        done = 0
        chosen = [(key, scores) for key, scores in ranked.items() if key[2] in columns]
        with ThreadPoolExecutor(CPU_COUNT) as pool:  # the cores this process may use
            for weights in draws:
                # Each disease's sort, sums and products release the GIL: one thread a core.
                for ((model, group, k), _), aucs in zip(chosen, pool.map(
                        lambda item, w=weights: item[1].aucs(w), chosen), strict=True):
                    out[(model, group)][done:done + len(weights), k] = aucs
                done += len(weights)
    return out


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a paired difference being zero: twice the smaller
    share of resamples on either side of zero (each share counted with one more resample,
    so it is never zero); NaN without a defined resample."""
    finite = differences[np.isfinite(differences)]
    if len(finite) == 0:
        return float("nan")
    below = (np.count_nonzero(finite <= 0) + 1) / (len(finite) + 1)
    above = (np.count_nonzero(finite >= 0) + 1) / (len(finite) + 1)
    return float(min(1.0, 2 * min(below, above)))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        if not np.isfinite(self.estimate):
            return "n/a"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.estimate:.3f}"
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def percentile_interval(estimate: float, samples: np.ndarray, level: float = 0.95) -> Interval:
    """The ``level`` percentile interval of ``samples`` (resamples where the statistic is
    undefined, NaN, are left out)."""
    finite = samples[np.isfinite(samples)]
    if not np.isfinite(estimate) or len(finite) == 0:
        return Interval(float(estimate), float("nan"), float("nan"))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def mean_over(samples: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Per resample, the mean over the chosen diseases (NaN where any of them is undefined,
    so every resample's mean is over the same diseases)."""
    if len(columns) == 0:  # a subgroup that can score no disease
        return np.full(len(samples), np.nan)
    return samples[:, columns].mean(axis=1)


__all__ = [
    "DEFAULT_RESAMPLES",
    "Interval",
    "RankedScores",
    "bootstrap_aucs",
    "bootstrap_p_value",
    "mean_over",
    "patient_weights",
    "percentile_interval",
    "stratified_patient_weights",
    "weighted_auc",
]
