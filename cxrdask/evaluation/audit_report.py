"""The audit's sections of ``report.md``: subgroups, calibration and operating points, the
comparison of two heads, expert labels and localisation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdask.archive.boxes import BOX_FINDINGS
from cxrdask.evaluation.audit import Audit
from cxrdask.evaluation.localisation import IOBB_THRESHOLDS, IOU_THRESHOLDS, WANG_CITATION, LocalisationReport


def _number(value: float, digits: int = 3, sign: bool = False) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _span(low: float, high: float, sign: bool = False) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return ""
    return f" [{_number(low, sign=sign)}, {_number(high, sign=sign)}]"


def audit_markdown(a: Audit, compared_with: str = "") -> str:
    """Markdown sections for the audit (after the per-disease table)."""
    parts = [_resamples(a), _subgroups(a), _calibration(a)]
    if a.comparison is not None:
        parts.append(_comparison(a.comparison, compared_with))
    if a.expert is not None:
        parts.append(_expert(a.expert, a.expert_listed))
    return "\n".join(parts)


def _resamples(a: Audit) -> str:
    """Which intervals rest on fewer resamples than were drawn, and why."""
    if not a.resamples:
        return "## Resamples\n\nNo intervals: no patient resamples were drawn.\n"
    short = [f"{row.label} {row.resamples_used}" for row in a.auc.itertuples()
             if row.resamples_used < a.resamples]
    groups = a.subgroups[(a.subgroups["label"] == "mean") & (a.subgroups["subgroup"] != "all")]
    short += [f"{row.subgroup} (mean, its gap) {row.resamples_used}" for row in groups.itertuples()
              if row.resamples_used < a.resamples]
    how = ("drawn per finding within two strata of patients, with and without a positive "
           "image of it (stratified, as pROC's default): every resample holds both classes of "
           "the whole split" if a.stratified else "not stratified by class")
    lines = ["## Resamples", "",
             f"Intervals are percentiles of {a.resamples} resamples of patients; the AUCs' are "
             f"{how}. A resample with no positive or no negative image of a finding (in a "
             "subgroup, or at all) leaves its AUC undefined and is left out of that interval; "
             + ("every interval here used all of them." if not short else
                "these used fewer: " + "; ".join(short) + ".")
             + " ECE and under-diagnosis intervals come from plain patient resamples (the "
               "same draws when not stratified)."]
    return "\n".join(lines) + "\n"


def _expert(table: pd.DataFrame, listed: int) -> str:
    images = int(table["images"].iloc[0]) if len(table) else 0
    lines = ["## Expert labels (Google 2019)", "",
             f"{images} images of this split are among the {listed} that radiologists relabelled "
             "(Majkowska et al., Radiology 2020). Each finding is scored on those images "
             "against the expert label and against NIH's original label, with paired "
             "patient-bootstrap intervals; the head's score is the highest probability of "
             "the NIH diseases the finding maps to. Fracture has no NIH label.", "",
             "| finding | NIH diseases | positives (expert / NIH) | AUC, expert labels | "
             "AUC, NIH labels | difference |", "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(
            f"| {row.finding} | {row.maps_to} | {row.positives_expert} / {row.positives_nih} | "
            f"{_number(row.auc_expert)}{_span(row.auc_expert_low, row.auc_expert_high)} | "
            f"{_number(row.auc_nih)}{_span(row.auc_nih_low, row.auc_nih_high)} | "
            f"{_number(row.difference, sign=True)}"
            f"{_span(row.difference_low, row.difference_high, sign=True)} |")
    return "\n".join(lines) + "\n"


def _subgroups(a: Audit) -> str:
    means = a.subgroups[a.subgroups["label"] == "mean"]
    lines = ["## Subgroups", "",
             "Mean AUC over the diseases each subgroup can score, its gap to the rest of the "
             "split (the images outside the subgroup) over the diseases both can score "
             "(paired: both from the same patient resamples), and the "
             "under-diagnosis rate: among images with a finding, the share the head calls "
             "\"No Finding\" (no disease at its validation-chosen threshold; Seyyed-Kalantari "
             "et al., Nature Medicine 2021). Per-disease subgroup AUCs are in report.json and "
             "subgroup_gaps.png. Each gap's p-value is the bootstrap's two-sided one, "
             "Benjamini-Hochberg adjusted over the subgroups' mean gaps (report.json has the "
             "per-disease gaps, adjusted over all of them).", "",
             "| subgroup | images | with a finding | mean AUC (95% CI) | gap to the rest (95% CI) "
             "| p (BH) | under-diagnosis (95% CI) |",
             "|---|---:|---:|---|---|---:|---|"]
    rates = a.underdiagnosis.set_index("subgroup")
    for row in means.itertuples():
        gap = ("" if row.subgroup == "all" else
               _number(row.gap, sign=True) + _span(row.gap_low, row.gap_high, sign=True))
        rate = (rates.loc[row.subgroup] if row.subgroup in rates.index
                else pd.Series({"rate": np.nan, "rate_low": np.nan, "rate_high": np.nan}))
        lines.append(f"| {row.subgroup} | {row.images} | {row.positives} | "
                     f"{_number(row.auc)}{_span(row.low, row.high)} | {gap} | "
                     f"{_number(row.gap_p_adjusted, 4)} | "
                     f"{_number(rate['rate'])}{_span(rate['rate_low'], rate['rate_high'])} |")
    if not np.isfinite(a.calibration["threshold"].to_numpy(dtype=float)).any():
        lines += ["", "Under-diagnosis is n/a: no disease has an operating threshold, because "
                  "the store has no validation split with both classes to choose them on."]
    return "\n".join(lines) + "\n"


def _calibration(a: Audit) -> str:
    lines = ["## Calibration and operating points", "",
             "Class-wise expected calibration error per disease over 10 equal-width bins of "
             "its own probability (Kull et al. 2019; not Guo et al.'s top-label ECE; "
             "reliability.png); each "
             "disease's threshold chosen on the validation split, then applied to this split.",
             "", "| disease | ECE (95% CI) | threshold | sensitivity | specificity | PPV | NPV |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in a.calibration.itertuples():
        cells = [_number(row.ece) + _span(row.ece_low, row.ece_high)]
        cells += [_number(v) for v in (row.threshold, row.sensitivity, row.specificity,
                                       row.ppv, row.npv)]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _comparison(table: pd.DataFrame, compared_with: str) -> str:
    lines = ["## Compared with another head", "",
             f"This head minus `{compared_with}` on the same images: the difference in AUC with "
             "its paired bootstrap interval, and DeLong's test (DeLong et al., Biometrics 1988) "
             f"with its variance {table['delong_variance'].iat[0]}; p-values raw and "
             "Benjamini-Hochberg adjusted over the diseases compared.",
             "", "| disease | AUC | other | difference (95% CI) | DeLong z | p | p (BH) |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for row in table.itertuples():
        lines.append(f"| {row.label} | {_number(row.auc)} | {_number(row.auc_other)} | "
                     f"{_number(row.difference, sign=True)}{_span(row.low, row.high, sign=True)} | "
                     f"{_number(row.delong_z, 2)} | {_number(row.delong_p, 4)} | "
                     f"{_number(row.delong_p_adjusted, 4)} |")
    return "\n".join(lines) + "\n"




def localisation_markdown(found: LocalisationReport) -> str:
    """The localisation section: accuracy per finding at IoBB (beside Wang et al. 2017's
    Table 4) and IoU thresholds, with the control of maps taken from other images."""
    lines = ["## Localisation (NIH's boxes)", "",
             f"{len(found.boxes)} of the {found.listed} boxes lie on {found.images} images of this "
             "split. For each, the Grad-CAM map of its finding was cut at half its peak and the "
             "region around the peak boxed; a box is correct when its overlap with the true box "
             "exceeds the threshold: IoBB (intersection over the drawn box, as Wang et al. 2017 "
             "scored) or IoU. *Control*: each true box scored against the map of another image "
             "with the same finding, what a map that ignores the image gets. "
             f"{WANG_CITATION}."]
    if found.missing_images:
        lines.append(f"\n{found.missing_images} box(es) had no map (the image could not be "
                     "read) and count as missed.")
    for measure, thresholds, title in (("iobb", IOBB_THRESHOLDS[:3], "IoBB"),
                                       ("iou", IOU_THRESHOLDS[::2], "IoU")):
        header = " | ".join(f"{title} > {t:g}" for t in thresholds)
        lines += ["", f"| finding | boxes | {header} |", "|---|---:|" + "---|" * len(thresholds)]
        for finding in BOX_FINDINGS:
            cells = []
            for t in thresholds:
                row = found.at(measure, t)
                row = row[row["finding"] == finding].iloc[0]
                cell = f"{_number(row['accuracy'], 2)} (control {_number(row['control'], 2)}"
                cell += f"; Wang {row['wang2017']:.2f})" if measure == "iobb" else ")"
                cells.append(cell)
            boxes = int(found.at(measure, thresholds[0]).set_index("finding").at[finding, "boxes"])
            lines.append(f"| {finding} | {boxes} | " + " | ".join(cells) + " |")
    lines += ["", "Wang et al. published accuracies at IoU thresholds only in their supplementary "
                  "material, not reproduced here.",
              "", "**Not directly comparable with Wang et al.'s figures.** The protocol differs: "
                  "here one box is drawn per finding and image (from the region around the map's "
                  "peak, the map cut at half its peak), where Wang et al. drew boxes from their "
                  "own heatmaps, thresholded otherwise, and could draw several per image; a box "
                  "counts as correct when its overlap is strictly above the threshold (`>`); the "
                  "backbone and head differ, and so may the images' split. Read the columns "
                  "side by side as orientation, not as a like-for-like comparison."]
    return "\n".join(lines) + "\n"


__all__ = ["audit_markdown", "localisation_markdown"]
