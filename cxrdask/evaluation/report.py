"""Evaluation's report: per-disease ROC AUC beside published results, with the intervals,
subgroups, calibration and operating points a clinical reader asks for, as markdown, JSON and
charts. :func:`evaluate` scores (:mod:`cxrdask.evaluation.scoring`), audits
(:mod:`cxrdask.evaluation.audit`) and renders it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.expert_labels import read_expert_labels
from cxrdask.choices import ScoredSplit
from cxrdask.config import EvaluateConfig
from cxrdask.errors import OptionError
from cxrdask.evaluation.audit import Audit, auc_per_label, audit
from cxrdask.evaluation.checklist import ChecklistItem, checklist_markdown, tripod_ai
from cxrdask.evaluation.external import OverlapCheck, training_overlap
from cxrdask.evaluation.localisation import WANG_CITATION, LocalisationReport
from cxrdask.evaluation.published import CHEXNET_2017, CITATIONS, WANG_2017
from cxrdask.evaluation.scoring import Scores, score_split, trained_archives
from cxrdask.head.batches import open_store, readable_rows
from cxrdask.head.model import Checkpoint, load_checkpoint
from cxrdask.store.targets import check_output_folder

FEW_POSITIVES = 10  # below this, a disease's AUC moves a lot with one image
FAR_FROM_CHANCE = 0.4  # an untrained head this far from AUC 0.5 is worth a sentence
# Why a synthetic sign is easy even for untrained heads (see cxrdask.archive.synthetic.render_image).
SYNTHETIC_GLOBAL_SIGNS = {
    "Emphysema": "its synthetic sign darkens and enlarges both lungs, a change of overall "
                 "brightness that any random projection of the features follows (image "
                 "brightness alone ranks it at an AUC of about 0.96 in the demo)",
}


def report_caveats(provenance: dict) -> list[str]:
    """What makes results not comparable with published ones: a synthetic archive, or
    random backbone weights (read from the store's or checkpoint's provenance)."""
    caveats = []
    if (provenance.get("archive") or {}).get("synthetic"):
        caveats.append("synthetic archive")
    if (provenance.get("backbone") or {}).get("kind") == "random":
        caveats.append("random-weight backbone")
    return caveats


@dataclass
class EvaluationReport:
    """Per-disease AUC of the trained and the untrained head, beside published results."""

    table: pd.DataFrame
    split: str
    split_description: str
    n_rows: int
    files: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    backbone: str = ""
    audit: Audit | None = None
    compared_with: str = ""
    localisation: LocalisationReport | None = None
    external: str | None = None  # what an external validation is; None if not one
    # The head's findings no scored row labels: they get no number anywhere, listed once.
    not_labelled: tuple[str, ...] = ()
    views: dict = field(default_factory=dict)  # the views scored, the rows kept and left out
    overlap: OverlapCheck | None = None  # the scored rows that are the head's training images
    # Each TRIPOD+AI entry: whether this run fills it (cxrdask.evaluation.checklist).
    checklist: list[ChecklistItem] = field(default_factory=list)

    @property
    def mean_over(self) -> list[str]:
        """The diseases every mean is taken over: those with both classes in the split."""
        return self.table.loc[np.isfinite(self.table["auc"]), "label"].tolist()

    def _mean(self, column: str) -> float:
        values = self.table.loc[self.table["label"].isin(self.mean_over), column]
        return float(values.mean()) if len(values) else float("nan")

    @property
    def mean_auc(self) -> float:
        return self._mean("auc")

    @property
    def mean_auc_untrained(self) -> float:
        return self._mean("auc_untrained")

    @property
    def caveat_line(self) -> str | None:
        """One line for reports and charts, or None for a real archive and real weights."""
        if not self.caveats:
            return None
        what = ", ".join(self.caveats)
        return f"{what[:1].upper()}{what[1:]}: not comparable with published results"

    def notes(self) -> list[str]:
        """Sentences that help read the table: few positives, untrained heads far from chance."""
        notes = []
        few = self.table[(self.table["positives"] < FEW_POSITIVES) & np.isfinite(self.table["auc"])]
        if len(few):
            notes.append(f"Fewer than {FEW_POSITIVES} positive images for "
                         f"{', '.join(f'{r.label} ({r.positives})' for r in few.itertuples())}: "
                         "their AUCs move by several hundredths with a single image.")
        if self.audit is not None and self.split == "validation":
            notes.append("The operating points' thresholds were chosen on this same validation "
                         "split: their sensitivities and specificities are optimistic.")
        extreme = self.table[np.abs(self.table["auc_untrained"] - 0.5) >= FAR_FROM_CHANCE]
        for row in extreme.itertuples():
            why = SYNTHETIC_GLOBAL_SIGNS.get(row.label) if "synthetic archive" in self.caveats else None
            notes.append(
                f"The untrained head scores {row.auc_untrained:.3f} on {row.label}: "
                + (f"real, not a leak: {why}." if why else
                   "the finding changes something that a random projection of the features "
                   "follows (or, with few positives, chance); it says the finding is easy to "
                   "see in these features, not that the head learned it."))
        return notes

    def summary_lines(self) -> list[str]:
        """The report's lead: mean AUC with its interval, the worst subgroup gap, the mean
        ECE and localisation."""
        a = self.audit
        if a is None:
            return [f"| mean AUC | {self.mean_auc:.3f} |"]
        worst = a.worst_gap
        gap = ("n/a" if worst is None else
               f"{worst['subgroup']}: {worst['gap']:+.3f}" + (
                   f" [{worst['gap_low']:+.3f}, {worst['gap_high']:+.3f}]"
                   if np.isfinite(worst["gap_low"]) else ""))
        return ["| measure | value |", "|---|---|",
                f"| mean AUC (95% CI, {a.resamples} patient resamples) | {a.mean_auc} |",
                f"| worst subgroup gap in mean AUC | {gap} |",
                f"| mean class-wise expected calibration error (10 bins) | {a.mean_ece:.3f} |",
                f"| localisation accuracy at IoBB 0.5 | {self._localisation_line()} |"]

    def _localisation_line(self) -> str:
        found = self.localisation
        if found is None:
            return "not computed (give the boxes and the images)"
        return (f"{found.mean_accuracy('iobb', 0.5):.3f} of {len(found.boxes)} boxes "
                f"(maps of other images: {found.mean_accuracy('iobb', 0.5, 'control'):.3f})")

    def to_markdown(self) -> str:
        shown = self.table.copy()
        kept = shown["label"].isin(self.mean_over)
        mean = {"label": f"**mean of {int(kept.sum())}**", "positives": int(shown["positives"].sum())}
        for column in ("auc", "auc_untrained", "wang2017", "chexnet"):
            mean[column] = self._mean(column)
        shown = pd.concat([shown, pd.DataFrame([mean])], ignore_index=True)
        head = []
        if self.caveat_line:
            head.append(f"> **{self.caveat_line}.**\n")
        head.extend([*self.summary_lines(), ""])
        head.append(f"Split: **{self.split}** ({self.n_rows} images); {self.split_description}.  ")
        if self.backbone:
            head.append(f"Backbone: {self.backbone}.  ")
        if self.external:
            head.append(f"**{self.external}**  ")
        if self.overlap is not None:
            head.append(f"{self.overlap.sentence()}  ")
        if self.views:
            head.append(f"Views: {describe_views(self.views)}.  ")
        if self.not_labelled:
            head.append(f"Not labelled in this archive (no number is given for them): "
                        f"{', '.join(self.not_labelled)}.  ")
        head.append(f"Means are over the same {int(kept.sum())} of {len(self.table)} diseases in "
                    "every column (those with positive and negative images in the split).\n")
        intervals = self._intervals()
        lines = ["| disease | positives | AUC | 95% CI | untrained head | Wang 2017 | CheXNet |",
                 "|---|---:|---:|---|---:|---:|---:|"]
        for row in shown.itertuples():
            cells = [f"{v:.3f}" if np.isfinite(v) else "n/a"
                     for v in (row.auc, row.auc_untrained, row.wang2017, row.chexnet)]
            cells.insert(1, intervals.get(row.label, ""))
            lines.append(f"| {row.label} | {row.positives} | " + " | ".join(cells) + " |")
        notes = [*self.notes(),
                 "Published results use other splits: " + "; ".join(CITATIONS.values()) + ".",
                 "n/a: the split has no positive (or no negative) image of that disease."]
        text = ("\n".join(head) + "\n" + "\n".join(lines) + "\n\n"
                + "\n".join(f"- {n}" for n in notes) + "\n")
        if self.audit is not None:
            from cxrdask.evaluation.audit_report import audit_markdown

            text += "\n" + audit_markdown(self.audit, self.compared_with)
        if self.localisation is not None:
            from cxrdask.evaluation.audit_report import localisation_markdown

            text += "\n" + localisation_markdown(self.localisation)
        return text

    def _intervals(self) -> dict[str, str]:
        """Each disease's (and the mean's) interval as text, where one was computed."""
        a = self.audit
        if a is None or not a.resamples:
            return {}
        out = {row.label: (f"{row.auc_low:.3f}-{row.auc_high:.3f}" if np.isfinite(row.auc_low)
                           else "n/a") for row in a.auc.itertuples()}
        out[f"**mean of {len(self.mean_over)}**"] = f"{a.mean_auc.low:.3f}-{a.mean_auc.high:.3f}"
        return out

    def to_json(self) -> dict:
        """The report as plain values (what ``report.json`` holds)."""
        return {
            "caveats": self.caveats, "comparable_with_published": not self.caveats,
            "split": self.split, "split_description": self.split_description, "rows": self.n_rows,
            "backbone": self.backbone, "external_validation": self.external,
            "not_labelled": list(self.not_labelled), "views": self.views,
            "overlap": None if self.overlap is None else self.overlap.to_json(),
            "mean_over": self.mean_over, "mean_auc": self.mean_auc,
            "mean_auc_untrained": self.mean_auc_untrained,
            "mean_wang2017": self._mean("wang2017"), "mean_chexnet": self._mean("chexnet"),
            "notes": self.notes(), "citations": CITATIONS,
            "per_label": json.loads(self.table.to_json(orient="records")),
            **({} if self.audit is None else _audit_json(self.audit, self.compared_with)),
            **({} if self.localisation is None else {"localisation": {
                "boxes_listed": self.localisation.listed, "boxes_scored": len(self.localisation.boxes),
                "images": self.localisation.images,
                "boxes_without_a_map": self.localisation.missing_images,
                "accuracy": json.loads(self.localisation.accuracy.to_json(orient="records")),
                "published": WANG_CITATION}}),
        }


def _plain(value: float) -> float | None:
    """A number for JSON: NaN (not computed) becomes null, as in the tables."""
    return float(value) if np.isfinite(value) else None


def _audit_json(a: Audit, compared_with: str) -> dict:
    def records(frame: pd.DataFrame | None):
        return None if frame is None else json.loads(frame.to_json(orient="records"))

    return {"bootstrap": {"resamples": a.resamples, "unit": "patient", "level": 0.95,
                          "stratified": a.stratified},
            "mean_auc_interval": [_plain(a.mean_auc.low), _plain(a.mean_auc.high)],
            "auc_intervals": records(a.auc), "subgroups": records(a.subgroups),
            "underdiagnosis": records(a.underdiagnosis), "calibration": records(a.calibration),
            "mean_ece": _plain(a.mean_ece), "compared_with": compared_with or None,
            "comparison": records(a.comparison), "expert_labels": records(a.expert),
            "expert_labels_listed": a.expert_listed}


def _check_options(config: EvaluateConfig, checkpoint: str | Checkpoint) -> None:
    """Refuse what :func:`evaluate` cannot use, before anything is read (the config checks
    its own values)."""
    if config.boxes is not None and isinstance(checkpoint, Checkpoint) and not checkpoint.path:
        raise OptionError("localisation runs on Dask workers, which load the checkpoint from "
                          "its file: pass the checkpoint's path")


def build_report(store, scores: Scores, found: Audit,
                 overlap: OverlapCheck | None = None) -> EvaluationReport:
    """The report of an audit (:func:`~cxrdask.evaluation.audit.audit` of ``scores``): the
    per-disease table beside the untrained head and published results, with the store's
    split, backbone and caveats."""
    targets, names = scores.scored.targets, scores.scored.labels
    nih = (store.provenance.get("archive") or {}).get("kind", "nih") == "nih"
    table = pd.DataFrame({
        "label": list(names),
        "positives": targets.sum(axis=0).astype(int),
        "auc": found.auc["auc"].to_numpy(),  # the audit's point estimates
        "auc_untrained": auc_per_label(targets, scores.untrained, scores.scored.known),
        # NIH's published AUCs, beside an NIH store's only (another archive's are not these).
        "wang2017": [WANG_2017.get(name, np.nan) if nih else np.nan for name in names],
        "chexnet": [CHEXNET_2017.get(name, np.nan) if nih else np.nan for name in names],
    })
    identity = store.provenance["backbone"]
    return EvaluationReport(
        table=table, split=scores.split,
        split_description=store.provenance["split"].get("description", ""),
        n_rows=len(targets), caveats=report_caveats(store.provenance),
        backbone=f"{identity['name']} ({identity['weights']})", audit=found,
        compared_with="" if scores.compared is None else str(scores.compared.path),
        external=external_validation(store, scores, overlap), not_labelled=scores.not_labelled,
        views=scores.views, overlap=overlap)


def describe_views(views: dict) -> str:
    """``frontal (frontal 812, unknown 3); left out: lateral 140`` for the report."""
    kept = ", ".join(f"{family} {n}" for family, n in views["kept"].items() if n)
    left = ", ".join(f"{family} {n}" for family, n in views["left_out"].items() if n)
    chosen = views["views"] if isinstance(views["views"], str) else ",".join(views["views"])
    return f"{chosen} ({kept or 'no rows'})" + (f"; left out: {left}" if left else "")


def external_validation(store, scores: Scores, overlap: OverlapCheck | None = None) -> str | None:
    """The sentence that says a head is scored on another archive than it was trained on,
    on how many of its findings, and which rows; None for an archive it trained on. Where
    the overlap with its training images was not checked, it is not called external."""
    ckpt = scores.checkpoint
    trained = ", ".join(sorted(trained_archives(ckpt)))
    here = (store.provenance.get("archive") or {}).get("kind", "nih")
    if here in trained_archives(ckpt):
        return None
    rows = ("every labelled row of the store (split all)" if scores.split == "all"
            else f"its {scores.split} split only")
    what = ("External validation" if overlap is None or overlap.checked
            else "Another archive's score (not shown to be external: see the overlap below)")
    return (f"{what}: a head trained on {trained}, scored on a {here} archive: on "
            f"{rows}, on the {len(scores.scored.labels)} of its {len(ckpt.label_names)} findings "
            "that rows here label.")


def evaluate(
    store,
    checkpoint: str | Checkpoint,
    config: EvaluateConfig | None = None,
    *,
    split: ScoredSplit | None = None,
    out_dir: str | os.PathLike | None = None,
    storage_options: StorageOptions | None = None,
    compare_to: str | Checkpoint | None = None,
    compare_store=None,
    client=None,
    **options: Any,
) -> EvaluationReport:
    """Per-disease ROC AUC on ``split`` with 95% intervals, subgroups, calibration and
    operating points; beside the untrained head and published results.

    Read out of core from the store (one pass over ``split``, one over the validation split
    for the thresholds). A store of an archive the head did not train on is scored whole
    (``split="all"``, what external validation means), and the report says so; a finding no
    scored row labels gets no number anywhere and is listed once as not labelled. Intervals
    come from a bootstrap over patients (images of one patient resampled together);
    subgroups are sex, age band and view position, each with its gap to the rest of the
    split and its under-diagnosis rate; thresholds are chosen on the validation split and
    applied to ``split`` (none with ``split="all"``: its rows include the validation split).
    The report states the split, the backbone, and whether the archive is synthetic or the
    weights random (then its numbers are not comparable with published ones).

    Parameters
    ----------
    store
        A :class:`FeatureStore` or its URL.
    checkpoint
        A head checkpoint (``head.pt``) trained on this store's backbone.
    split
        ``"test"``, ``"validation"``, ``"train"``, or ``"all"`` (every readable row). None:
        ``"all"`` for a store of an archive the head did not train on, else ``"test"``.
    out_dir
        Where ``report.md``, ``report.json`` and the charts go; None: no files.
    storage_options
        fsspec options.
    compare_to
        A second checkpoint on the same store: per disease, the paired difference in AUC
        with its bootstrap interval and DeLong's test.
    compare_store
        The store ``compare_to`` reads, when it is another backbone's: the same images,
        split and readable rows, other features (two backbones compared on one archive).
    config, **options
        How it is audited (:class:`~cxrdask.config.EvaluateConfig`: bootstrap resamples,
        seed, threshold rule and specificity, expert labels, boxes and images for
        localisation, backbone weights file, local workers): ``evaluate(store, "head.pt",
        bootstrap=200)`` or ``evaluate(store, "head.pt", EvaluateConfig(bootstrap=200))``.
    client
        Where localisation runs (a Dask client; None: the current client, else a local
        cluster of ``config.n_workers`` kept for the Python session).

    Returns
    -------
    EvaluationReport
        The table (AUC, untrained AUC, Wang 2017, CheXNet per disease), means, notes, and
        the audit (intervals, subgroups, calibration, comparison).

    Raises
    ------
    CheckpointMismatchError
        The head (or the one compared with) was trained on another backbone or other inputs.
    MetadataError
        The expert-label file is malformed (each bad row named).
    """
    config = EvaluateConfig.with_options(config, **options)
    _check_options(config, checkpoint)
    expert = (None if config.expert_labels is None  # checked before any pass
              else read_expert_labels(config.expert_labels, storage_options))
    store = open_store(store, storage_options)
    if out_dir is not None:  # checked before any pass
        check_output_folder(str(out_dir), "the report folder", {"the store": store.url,
                                                                "the images folder": config.images})
    checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    overlap = training_overlap(store, checkpoint, storage_options)
    scores = score_split(store, checkpoint, split=split, compare_to=compare_to,
                         compare_store=compare_store, storage_options=storage_options,
                         views=config.views,
                         exclude_rows=None if overlap is None or not overlap.checked else overlap.rows)
    found = audit(scores.scored, scores.validation, other=scores.other,
                  resamples=config.bootstrap, seed=config.seed, rule=config.threshold_rule,
                  specificity=config.specificity, expert=expert, stratified=config.stratified)
    if overlap is not None and overlap.checked:  # the rows left out of this split, not all
        overlap = overlap.within(readable_rows(store, scores.split, config.views))
    report = build_report(store, scores, found, overlap)
    report.checklist = tripod_ai(store, scores, report, config)
    if config.boxes is not None and config.images is not None:
        from cxrdask.evaluation.localisation import localise
        from cxrdask.runtime.cluster import session_client

        report.localisation = localise(
            store, str(scores.checkpoint.path), config.boxes, config.images, split=scores.split,
            client=client or session_client(config.n_workers, announce=False),
            weights=config.weights, storage_options=storage_options, seed=config.seed)
    if out_dir is not None:
        report.files = write_report(report, scores, out_dir)
    return report


def write_report(report: EvaluationReport, scores: Scores, out_dir: str | os.PathLike
                 ) -> list[str]:
    """The last step of :func:`evaluate`: ``report.md``, ``report.json`` and the charts
    (ROC, AUC bars, reliability, subgroup gaps) in ``out_dir``; the files written."""
    from cxrdask.evaluation.calibration import reliability_figure
    from cxrdask.plots import auc_bars_figure, roc_figure, save_figure, subgroup_gap_figure

    out, ckpt = Path(out_dir), scores.checkpoint
    targets, probabilities = scores.scored.targets, scores.scored.probabilities
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report.to_markdown())
    if report.checklist:
        (out / "checklist.md").write_text(checklist_markdown(report.checklist))
    (out / "report.json").write_text(json.dumps(
        {**report.to_json(), "checkpoint": ckpt.path, "backbone_identity": ckpt.backbone},
        indent=2))
    caveat = report.caveat_line
    files = [str(out / "report.md"), str(out / "report.json"),
             *([str(out / "checklist.md")] if report.checklist else []),
             save_figure(roc_figure(targets, probabilities, caveat, scores.scored.labels,
                                    scores.scored.known), out / "roc.png"),
             save_figure(auc_bars_figure(report.table, caveat), out / "auc_bars.png"),
             save_figure(reliability_figure(targets, probabilities, caveat, scores.scored.labels,
                                            scores.scored.known), out / "reliability.png")]
    if report.audit is not None:
        files.append(save_figure(subgroup_gap_figure(report.audit.subgroups, caveat),
                                 out / "subgroup_gaps.png"))
    return files


__all__ = [
    "FAR_FROM_CHANCE",
    "FEW_POSITIVES",
    "SYNTHETIC_GLOBAL_SIGNS",
    "EvaluationReport",
    "build_report",
    "describe_views",
    "evaluate",
    "external_validation",
    "report_caveats",
    "write_report",
]
