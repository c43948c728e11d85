"""Calibration (expected calibration error, reliability curves) and operating points.

A threshold per disease is chosen on the *validation* split (Youden's J, or the lowest
threshold that keeps a target specificity) and then applied unchanged to the test split,
where sensitivity, specificity, PPV and NPV are reported: choosing it on the test split
would flatter every number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from cxrdask.config import ThresholdRule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_BINS = 10


def reliability(targets: np.ndarray, probabilities: np.ndarray, bins: int = DEFAULT_BINS
                ) -> pd.DataFrame:
    """Per equal-width probability bin: images, mean predicted probability, observed rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=probabilities, minlength=bins)
    observed = np.bincount(which, weights=np.asarray(targets, dtype=float), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"low": edges[:-1], "high": edges[1:], "images": count,
                             "predicted": predicted / count, "observed": observed / count})


def expected_calibration_error(targets: np.ndarray, probabilities: np.ndarray,
                               bins: int = DEFAULT_BINS) -> float:
    """One finding's expected calibration error: over equal-width bins of its predicted
    probability, the image-weighted mean gap between that probability and the finding's
    observed rate.

    Per finding, this is the class-wise ECE (Kull et al., NeurIPS 2019; Nixon et al., CVPR
    Workshops 2019) that suits a multi-label head, not Guo et al.'s (ICML 2017) top-label
    ECE of a single-label classifier, which scores only the most confident class of each
    image and comes out far smaller on the same probabilities."""
    table = reliability(targets, probabilities, bins)
    used = table["images"] > 0
    gaps = (table.loc[used, "predicted"] - table.loc[used, "observed"]).abs()
    return float((gaps * table.loc[used, "images"]).sum() / max(int(table["images"].sum()), 1))


def resampled_ece(targets: np.ndarray, probabilities: np.ndarray, weights: np.ndarray,
                  bins: int = DEFAULT_BINS) -> np.ndarray:
    """:func:`expected_calibration_error` under each row of ``weights`` ``(resamples,
    images)`` (the patient bootstrap's counts): per bin, the weighted predicted and observed
    totals; the ECE is their absolute gaps summed over the bins, over the total weight."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    onehot = np.zeros((len(which), bins), dtype=np.float64)
    onehot[np.arange(len(which)), which] = 1.0
    w = np.asarray(weights, dtype=np.float64)
    predicted = w @ (onehot * np.asarray(probabilities, dtype=np.float64)[:, None])
    observed = w @ (onehot * np.asarray(targets, dtype=np.float64)[:, None])
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.abs(predicted - observed).sum(axis=1) / total, np.nan)


def choose_threshold(targets: np.ndarray, probabilities: np.ndarray,
                     rule: ThresholdRule = "youden", specificity: float = 0.9) -> float:
    """A decision threshold from one split: Youden's J (sensitivity + specificity - 1 at its
    largest) or the lowest threshold whose specificity is at least ``specificity``. NaN when
    the split has only one class."""
    positive = np.asarray(targets, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    # Every distinct score is a candidate: sklearn's default drop_intermediate=True thins
    # the curve to its corners and can drop the lowest threshold that keeps the specificity
    # (58 of 200 seeded cases chose another threshold than an exhaustive search).
    fpr, tpr, thresholds = roc_curve(positive, probabilities, drop_intermediate=False)
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf
    if rule == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    allowed = np.flatnonzero(1.0 - fpr >= specificity)
    return float(thresholds[allowed[-1]])  # the most sensitive one that keeps the specificity


def operating_point(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity, PPV and NPV when ``probability >= threshold`` is positive."""
    positive = np.asarray(targets, dtype=bool)
    called = probabilities >= threshold
    tp = int((called & positive).sum())
    fp = int((called & ~positive).sum())
    fn = int((~called & positive).sum())
    tn = int((~called & ~positive).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {"threshold": threshold, "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}


def reliability_figure(targets: np.ndarray, probabilities: np.ndarray,
                       caveat: str | None = None, labels=None,
                       known: np.ndarray | None = None) -> Figure:
    """A reliability diagram per disease (NIH's 14 unless ``labels`` names them): observed
    rate against mean predicted probability in 10 equal-width bins, on the images labelled
    for it, with the ECE in each panel's title."""
    from cxrdask.archive.findings import labelled_rows
    from cxrdask.archive.labels import LABELS
    from cxrdask.plots import add_caveat, finding_colour, new_figure

    labels = LABELS if labels is None else labels
    rows_of_panels = max(4, -(-len(labels) // 4))
    figure = new_figure(12, 9 * rows_of_panels / 4)
    for i, name in enumerate(labels):
        ax = figure.add_subplot(rows_of_panels, 4, i + 1)
        rows = labelled_rows(known, i, len(targets))
        table = reliability(targets[rows, i], probabilities[rows, i])
        used = table["images"] > 0
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.plot(table.loc[used, "predicted"], table.loc[used, "observed"], marker="o",
                markersize=3, color=finding_colour(name, i))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ece = expected_calibration_error(targets[rows, i], probabilities[rows, i])
        ax.set_title(f"{name} (ECE {ece:.3f})", fontsize=8)
        ax.tick_params(labelsize=6)
    figure.supxlabel("mean predicted probability", fontsize=9)
    figure.supylabel("observed rate", fontsize=9)
    figure.subplots_adjust(hspace=0.5, wspace=0.3, top=0.93)
    add_caveat(figure, caveat)
    return figure


__all__ = [
    "ThresholdRule",
    "choose_threshold",
    "expected_calibration_error",
    "operating_point",
    "reliability",
    "reliability_figure",
    "resampled_ece",
]
