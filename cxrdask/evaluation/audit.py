"""The tables of a clinical evaluation, from probabilities already computed.

:func:`cxrdask.evaluation.report.evaluate` reads the store once per split and hands the arrays
here: per-disease AUC intervals (a bootstrap over patients), subgroup AUCs with their gaps
to the rest of the split and under-diagnosis rates, calibration and operating points, and the
paired comparison of two heads (bootstrap interval and DeLong's test). Nothing here reads
storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrdask.archive.expert_labels import EXPERT_TO_NIH, nih_composite
from cxrdask.archive.findings import labelled_rows
from cxrdask.archive.labels import LABELS
from cxrdask.evaluation.bootstrap import (
    Interval,
    bootstrap_aucs,
    bootstrap_p_value,
    mean_over,
    patient_weights,
    percentile_interval,
)
from cxrdask.evaluation.calibration import (
    ThresholdRule,
    choose_threshold,
    expected_calibration_error,
    operating_point,
    resampled_ece,
)
from cxrdask.evaluation.delong import clustered_delong_test, delong_test
from cxrdask.evaluation.subgroups import resampled_underdiagnosis, subgroup_masks, underdiagnosis_rate


@dataclass(frozen=True)
class Scored:
    """One split's rows as the evaluation sees them (rows in store order)."""

    targets: np.ndarray  # (images, diseases) bool (False where missing)
    probabilities: np.ndarray  # (images, diseases)
    rows: pd.DataFrame  # patient_id, sex, age, view per image
    known: np.ndarray | None = None  # (images, diseases) bool; None: every label is known
    labels: tuple[str, ...] = LABELS  # the diseases' names, in the columns' order

    def known_of(self, k: int) -> np.ndarray:
        """Which rows have a label for disease ``k`` (all, for NIH)."""
        return labelled_rows(self.known, k, len(self.targets))


def _auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one disease; NaN where the rows hold only one class."""
    from sklearn.metrics import roc_auc_score

    positives = int(targets.sum())
    if 0 < positives < len(targets):
        return float(roc_auc_score(targets, scores))
    return float("nan")


def auc_per_label(targets: np.ndarray, probabilities: np.ndarray,
                  known: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC per disease (column), over the rows whose label is ``known`` (all by default);
    NaN where those rows hold only one class for it."""
    rows = [labelled_rows(known, k, len(targets)) for k in range(targets.shape[1])]
    return np.array([_auc(targets[r, k], probabilities[r, k]) for k, r in enumerate(rows)])


def _interval(estimate: float, samples: np.ndarray | None) -> Interval:
    """The estimate with its percentile interval, or without one where nothing was resampled."""
    if samples is None:
        return Interval(estimate, float("nan"), float("nan"))
    return percentile_interval(estimate, samples)


@dataclass
class Audit:
    """Everything :func:`audit` finds (each a table; see the column lists in its fields)."""

    auc: pd.DataFrame  # label, auc, auc_low, auc_high, resamples_used
    mean_auc: Interval
    # subgroup, label, images, positives, auc, low, high, gap, gap_low, gap_high, gap_p,
    # gap_p_adjusted (Benjamini-Hochberg over the per-disease gaps; the means apart), resamples_used
    subgroups: pd.DataFrame
    underdiagnosis: pd.DataFrame  # subgroup, images_with_finding, rate, rate_low, rate_high
    calibration: pd.DataFrame  # label, ece, ece_low, ece_high, threshold, sensitivity, ...
    comparison: pd.DataFrame | None  # label, auc, auc_other, difference, low, high, delong_z, delong_p
    resamples: int
    stratified: bool = False  # AUC resamples drawn within each finding's strata of patients
    # finding, images, positives_expert, positives_nih, auc_expert(_low/_high), auc_nih(...),
    # difference(_low/_high): the head against Google's expert labels and NIH's on the same images
    expert: pd.DataFrame | None = None
    expert_listed: int = 0  # rows of the expert-label file (all sets)

    @property
    def worst_gap(self) -> pd.Series | None:
        """The subgroup whose mean AUC falls furthest below the rest of the split's."""
        means = self.subgroups[(self.subgroups["label"] == "mean")
                               & (self.subgroups["subgroup"] != "all")]
        means = means[np.isfinite(means["gap"])]
        return None if means.empty else means.loc[means["gap"].idxmin()]

    @property
    def mean_ece(self) -> float:
        return float(np.nanmean(self.calibration["ece"])) if len(self.calibration) else float("nan")


def audit(test: Scored, validation: Scored | None, *, other: np.ndarray | None = None,
          resamples: int = 1000, seed: int = 0, rule: ThresholdRule = "youden",
          specificity: float = 0.9, expert: pd.DataFrame | None = None,
          stratified: bool = False) -> Audit:
    """Intervals, subgroups, calibration, (with ``other``: a second head's test
    probabilities on the same rows) the paired comparison, and (with ``expert``: from
    :func:`~cxrdask.archive.expert_labels.read_expert_labels`) the scores against expert labels.

    Every interval is a percentile interval over ``resamples`` patient resamples. With
    ``stratified``, the AUCs' resamples are drawn per finding within two strata of patients
    (with and without a positive image of it; pROC's default, by patient), so none lacks a
    class; ECE and under-diagnosis intervals always resample patients plainly."""
    groups = subgroup_masks(test.rows)
    models = {"head": test.probabilities}
    if other is not None:
        models["other"] = other
    # Each subgroup is compared with the rest of the split (not with the whole split, which
    # contains it and so pulls the gap towards zero): the rests are resampled too.
    rests = {rest_name(name): ~mask for name, mask in groups.items()
             if name != "all" and (~mask).any()}
    patients = test.rows["patient_id"].to_numpy()
    samples = (bootstrap_aucs(test.targets, models, patients, {**groups, **rests},
                              n_resamples=resamples, seed=seed, stratified=stratified,
                              known=test.known)
               if resamples else {})
    point = auc_per_label(test.targets, test.probabilities, test.known)
    n_labels = len(test.labels)
    defined = np.flatnonzero(np.isfinite(point))

    whole = samples.get(("head", "all"))
    per_label = [_interval(point[k], None if whole is None else whole[:, k])
                 for k in range(n_labels)]
    auc_table = pd.DataFrame({"label": list(test.labels), "auc": point,
                              "auc_low": [i.low for i in per_label],
                              "auc_high": [i.high for i in per_label],
                              "resamples_used": resamples_used(whole, n_labels)})
    mean_auc = _interval(float(point[defined].mean()) if len(defined) else float("nan"),
                        None if whole is None else mean_over(whole, defined))
    thresholds = _thresholds(validation, rule, specificity, n_labels)
    ece_samples, missed_samples = _resampled_calibration(test, thresholds, groups, resamples, seed)
    return Audit(
        auc=auc_table, mean_auc=mean_auc,
        subgroups=_subgroup_table(test, groups, samples, point),
        underdiagnosis=_underdiagnosis_table(test, thresholds, groups, missed_samples),
        calibration=_calibration_table(test, thresholds, ece_samples),
        comparison=None if other is None else _comparison_table(test, other, samples, point),
        resamples=resamples, stratified=stratified,
        expert=None if expert is None else _expert_table(test, expert, resamples, seed),
        expert_listed=0 if expert is None else len(expert),
    )


def _expert_table(test: Scored, expert: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
    """Each mapped finding scored against the expert label and NIH's, on the split's images
    that the expert file lists, with paired patient-bootstrap intervals."""
    match = expert.set_index("image_index").reindex(test.rows["image_index"].to_numpy())
    listed = match["set_id"].notna().to_numpy()
    patients = test.rows["patient_id"].to_numpy()[listed]
    records = []
    for finding in EXPERT_TO_NIH:
        expert_y = match[finding].to_numpy()[listed].astype(bool)
        nih_y = nih_composite(test.targets[listed], finding).astype(bool)
        score = nih_composite(test.probabilities[listed], finding)
        targets = np.c_[expert_y, nih_y]
        point = auc_per_label(targets, np.c_[score, score])
        if resamples and listed.any():
            both = bootstrap_aucs(targets, {"head": np.c_[score, score]}, patients,
                                  {"all": np.ones(int(listed.sum()), bool)},
                                  n_resamples=resamples, seed=seed)[("head", "all")]
        else:
            both = np.full((1, 2), np.nan)
        on_expert = percentile_interval(point[0], both[:, 0])
        on_nih = percentile_interval(point[1], both[:, 1])
        gap = percentile_interval(point[0] - point[1], both[:, 0] - both[:, 1])
        records.append({"finding": finding, "maps_to": " or ".join(EXPERT_TO_NIH[finding]),
                        "images": int(listed.sum()), "positives_expert": int(expert_y.sum()),
                        "positives_nih": int(nih_y.sum()),
                        "auc_expert": on_expert.estimate, "auc_expert_low": on_expert.low,
                        "auc_expert_high": on_expert.high, "auc_nih": on_nih.estimate,
                        "auc_nih_low": on_nih.low, "auc_nih_high": on_nih.high,
                        "difference": gap.estimate, "difference_low": gap.low,
                        "difference_high": gap.high})
    return pd.DataFrame(records)


def _resampled_calibration(test: Scored, thresholds: np.ndarray, groups: dict[str, np.ndarray],
                           resamples: int, seed: int
                           ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Per patient resample, each disease's ECE ``(resamples, diseases)`` and each
    subgroup's under-diagnosis rate ``(resamples,)``; (None, {}) without resamples."""
    if not resamples:
        return None, {}
    ece = np.empty((resamples, len(test.labels)))
    missed = {name: np.empty(resamples) for name in groups}
    done = 0
    for weights in patient_weights(test.rows["patient_id"].to_numpy(), resamples, seed):
        rows = slice(done, done + len(weights))
        for k in range(len(test.labels)):
            known = test.known_of(k)
            ece[rows, k] = resampled_ece(test.targets[known, k], test.probabilities[known, k],
                                         weights[:, known])
        for name, mask in groups.items():
            missed[name][rows] = resampled_underdiagnosis(
                test.targets[mask], test.probabilities[mask], thresholds, weights[:, mask])
        done += len(weights)
    return ece, missed


def _underdiagnosis_table(test: Scored, thresholds: np.ndarray, groups: dict[str, np.ndarray],
                          samples: dict[str, np.ndarray]) -> pd.DataFrame:
    records = []
    for name, mask in groups.items():
        rate = _interval(underdiagnosis_rate(test.targets[mask], test.probabilities[mask],
                                             thresholds), samples.get(name))
        records.append({"subgroup": name,
                        "images_with_finding": int(test.targets[mask].any(axis=1).sum()),
                        "rate": rate.estimate, "rate_low": rate.low, "rate_high": rate.high})
    return pd.DataFrame(records)


def _thresholds(validation: Scored | None, rule: ThresholdRule, specificity: float,
                n_labels: int = len(LABELS)) -> np.ndarray:
    if validation is None or not len(validation.targets):
        return np.full(n_labels, np.nan)
    rows = [validation.known_of(k) for k in range(n_labels)]
    return np.array([choose_threshold(validation.targets[r, k], validation.probabilities[r, k],
                                      rule, specificity) for k, r in enumerate(rows)])


def resamples_used(samples: np.ndarray | None, width: int = 1) -> np.ndarray:
    """Per column, the resamples whose statistic is defined: a patient resample with no
    positive (or no negative) image of a finding has no AUC for it and is left out of its
    interval, which the report then says rather than hides."""
    if samples is None:
        return np.zeros(width, dtype=int)
    return np.isfinite(samples).sum(axis=0).astype(int)


def rest_name(subgroup: str) -> str:
    """The name of the images of a split outside ``subgroup``, each subgroup's comparison."""
    return f"not {subgroup}"


def _subgroup_table(test: Scored, groups: dict[str, np.ndarray],
                    samples: dict[tuple[str, str], np.ndarray], whole_point: np.ndarray
                    ) -> pd.DataFrame:
    """Per subgroup and disease (and their mean): the AUC with its interval, and the gap to
    the rest of the split (the images outside the subgroup), paired on the same resamples;
    no gap for the whole split. The mean runs over the diseases both sides can score."""
    records = []
    for name, mask in groups.items():
        targets = test.targets[mask]
        known = None if test.known is None else test.known[mask]
        point = auc_per_label(targets, test.probabilities[mask], known)
        resampled = samples.get(("head", name))
        if name == "all" or not (~mask).any():
            rest_point, rest = np.full(len(test.labels), np.nan), None
        else:
            rest_point = auc_per_label(test.targets[~mask], test.probabilities[~mask],
                                       None if test.known is None else test.known[~mask])
            rest = samples.get(("head", rest_name(name)))
        defined = np.flatnonzero(np.isfinite(point) & (np.isfinite(rest_point) | (name == "all")))
        for k, label in [*enumerate(test.labels), (None, "mean")]:
            if k is None:  # the mean over the diseases this subgroup (and its rest) can score
                estimate = float(point[defined].mean()) if len(defined) else float("nan")
                base = float(rest_point[defined].mean()) if len(defined) else float("nan")
                values = None if resampled is None else mean_over(resampled, defined)
                base_values = None if rest is None else mean_over(rest, defined)
                positives = int(targets.any(axis=1).sum())
            else:
                estimate, base = float(point[k]), float(rest_point[k])
                values = None if resampled is None else resampled[:, k]
                base_values = None if rest is None else rest[:, k]
                positives = int(targets[:, k].sum())
            auc = _interval(estimate, values)
            gap = _interval(estimate - base, None if values is None or base_values is None
                            else values - base_values)
            used = (values - base_values if values is not None and base_values is not None
                    else values)
            gap_p = (bootstrap_p_value(values - base_values)
                     if values is not None and base_values is not None else float("nan"))
            records.append({"subgroup": name, "label": label, "images": int(mask.sum()),
                            "positives": positives, "auc": auc.estimate, "low": auc.low,
                            "high": auc.high, "gap": gap.estimate, "gap_low": gap.low,
                            "gap_high": gap.high,
                            "gap_p": gap_p,
                            "resamples_used": 0 if used is None
                            else int(np.isfinite(used).sum())})
    table = pd.DataFrame(records)
    table["gap_p_adjusted"] = np.nan
    for family in (table["label"] != "mean", table["label"] == "mean"):  # diseases; means apart
        table.loc[family, "gap_p_adjusted"] = adjusted_p_values(
            table.loc[family, "gap_p"].to_numpy(dtype=float))
    return table


def _calibration_table(test: Scored, thresholds: np.ndarray, ece_samples: np.ndarray | None
                       ) -> pd.DataFrame:
    records = []
    for k, label in enumerate(test.labels):
        known = test.known_of(k)
        targets, probabilities = test.targets[known, k], test.probabilities[known, k]
        point = (operating_point(targets, probabilities, thresholds[k])
                 if np.isfinite(thresholds[k]) else
                 dict.fromkeys(("threshold", "sensitivity", "specificity", "ppv", "npv"), np.nan))
        ece = _interval(expected_calibration_error(targets, probabilities),
                        None if ece_samples is None else ece_samples[:, k])
        records.append({"label": label, "ece": ece.estimate, "ece_low": ece.low,
                        "ece_high": ece.high, **point})
    return pd.DataFrame(records)


def _comparison_table(test: Scored, other: np.ndarray,
                      samples: dict[tuple[str, str], np.ndarray], point: np.ndarray) -> pd.DataFrame:
    """``point``: this head's per-disease AUCs, already computed."""
    records = []
    ours, theirs = samples.get(("head", "all")), samples.get(("other", "all"))
    patients = test.rows["patient_id"].to_numpy()
    clustered = len(np.unique(patients)) < len(patients)  # some patient has several images
    for (k, label), b in zip(enumerate(test.labels),
                             auc_per_label(test.targets, other, test.known), strict=True):
        known = test.known_of(k)
        targets = test.targets[known, k]
        a = float(point[k])
        diff = _interval(a - b, None if ours is None or theirs is None
                         else ours[:, k] - theirs[:, k])
        z = p = float("nan")
        if 2 <= int(targets.sum()) <= len(targets) - 2:  # else DeLong's variance is undefined
            mine, its = test.probabilities[known, k], other[known, k]
            test_result = (clustered_delong_test(targets, mine, its, patients[known]) if clustered
                           else delong_test(targets, mine, its))
            z, p = test_result.z, test_result.p_value
        records.append({"label": label, "auc": a, "auc_other": b, "difference": diff.estimate,
                        "low": diff.low, "high": diff.high, "delong_z": z, "delong_p": p,
                        "delong_variance": "clustered by patient (Obuchowski 1997)" if clustered
                        else "per image (DeLong 1988)"})
    table = pd.DataFrame(records)
    table["delong_p_adjusted"] = adjusted_p_values(table["delong_p"].to_numpy())
    return table


def adjusted_p_values(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``) of the
    finite ones, over the diseases compared; NaN stays NaN. Fourteen tests at once: a raw
    p below 0.05 alone is expected by chance in about one comparison of two."""
    from scipy.stats import false_discovery_control

    out = np.full(len(p_values), np.nan)
    finite = np.isfinite(p_values)
    if finite.any():
        out[finite] = false_discovery_control(p_values[finite], method="bh")
    return out


__all__ = ["Audit", "Scored", "adjusted_p_values", "auc_per_label", "audit", "resamples_used"]
