"""Evaluation: per-disease ROC AUC beside published results, with the intervals, subgroups,
calibration and operating points a clinical reader asks for (see :mod:`cxrdask.evaluation.audit`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrdask._fs import StorageOptions
from cxrdask.archive.expert_labels import read_expert_labels
from cxrdask.config import EvaluateConfig
from cxrdask.errors import CheckpointMismatchError, OptionError
from cxrdask.evaluation.audit import Audit, Scored, auc_per_label, audit
from cxrdask.evaluation.localisation import WANG_CITATION, LocalisationReport
from cxrdask.head.batches import FeatureBatches, open_store
from cxrdask.head.model import Checkpoint, DiagnosisHead, load_checkpoint, new_head
from cxrdask.store.targets import check_output_folder

# Published test-set AUCs, kept for comparison (their splits differ from ours: see the report).
WANG_2017 = {  # Wang et al., "ChestX-ray8", CVPR 2017, Table 4, ResNet-50.
    "Atelectasis": 0.7003, "Cardiomegaly": 0.8100, "Effusion": 0.7585, "Infiltration": 0.6614,
    "Mass": 0.6933, "Nodule": 0.6687, "Pneumonia": 0.6580, "Pneumothorax": 0.7993,
    "Consolidation": 0.7032, "Edema": 0.8052, "Emphysema": 0.8330, "Fibrosis": 0.7859,
    "Pleural_Thickening": 0.6835, "Hernia": 0.8717,
}
CHEXNET_2017 = {  # Rajpurkar et al., "CheXNet", arXiv:1711.05225, Table 1 (DenseNet-121).
    "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345,
    "Mass": 0.8676, "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887,
    "Consolidation": 0.7901, "Edema": 0.8878, "Emphysema": 0.9371, "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062, "Hernia": 0.9164,
}
CITATIONS = {
    "wang2017": "Wang X. et al., ChestX-ray8, CVPR 2017 (ResNet-50, official split)",
    "chexnet": "Rajpurkar P. et al., CheXNet, arXiv:1711.05225 (DenseNet-121, own patient split)",
}


def head_outputs(heads: list[DiagnosisHead], batches: FeatureBatches
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each head's probabilities and the targets of every row, in one pass over the store."""
    for head in heads:
        head.eval()
    probabilities: list[list[np.ndarray]] = [[] for _ in heads]
    targets = []
    with torch.inference_mode():
        for inputs, labels in batches:
            for out, head in zip(probabilities, heads, strict=True):
                out.append(head.probabilities(inputs).numpy())
            targets.append(labels.numpy())
    if not targets:
        empty = np.zeros((0, len(batches.store.label_names)))
        return [empty for _ in heads], empty
    return [np.concatenate(p) for p in probabilities], np.concatenate(targets)


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
    external: str | None = None  # what an external validation is and leaves out; None if not one

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


@dataclass(frozen=True)
class Scores:
    """A head's probabilities on one split, beside what the audit compares them with: the
    validation split's (where thresholds are chosen; None where it is empty), the same head
    untrained (the same seed's initial weights, the same input standardisation), and a
    second head's (None without one). What :func:`score_split` returns."""

    split: str
    scored: Scored
    untrained: np.ndarray
    validation: Scored | None
    other: np.ndarray | None
    checkpoint: Checkpoint
    compared: Checkpoint | None = None


def score_split(store, checkpoint: str | Checkpoint, *, split: str = "test",
                compare_to: str | Checkpoint | None = None, compare_store=None,
                storage_options: StorageOptions | None = None) -> Scores:
    """The first step of :func:`evaluate`, callable alone: the heads' probabilities on
    ``split`` (one pass over its chunks, out of core) and on the validation split.

    ``compare_store``: the store the second head reads (features of another backbone on
    the same images, rows and split), for a comparison of two backbones; by default the
    second head reads ``store``.

    Raises
    ------
    CheckpointMismatchError
        A head was trained on another backbone, preprocessing or inputs (checked before any
        chunk is read).
    StoreMismatchError
        ``compare_store`` holds other images, another split, or other readable rows.
    """
    store = open_store(store, storage_options)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    other = (None if compare_to is None else compare_to if isinstance(compare_to, Checkpoint)
             else load_checkpoint(compare_to))
    if compare_store is not None and other is None:
        raise OptionError("compare_store is the store the second head (compare_to) reads: "
                          "give that head too")
    other_store = (store if compare_store is None
                   else paired_store(store, compare_store, split, storage_options))
    for head, read in ((ckpt, store), (other, other_store)):
        if head is not None:
            head.check_features(read.provenance["backbone"], read.provenance.get("preprocessing"))
    if not shared_findings(store.label_names, ckpt.label_names)[0]:
        raise CheckpointMismatchError(
            f"{ckpt.path or 'the head'} predicts {', '.join(ckpt.label_names)}; {store.url} "
            f"labels {', '.join(store.label_names)}: no finding in common to score")
    batches = FeatureBatches(store, split, 4096, shuffle=False,
                             demographics=tuple(ckpt.input["demographics"]))
    ckpt.check_inputs(batches.n_inputs)
    if other is not None:
        other_batches = FeatureBatches(other_store, split, 4096, shuffle=False,
                                       demographics=tuple(other.input["demographics"]))
        other.check_inputs(other_batches.n_inputs)
    untrained = new_head(batches.n_inputs, int(ckpt.config.get("seed", 0)))
    untrained.input_mean.copy_(ckpt.head.input_mean)
    untrained.input_scale.copy_(ckpt.head.input_scale)
    (probabilities, untrained_probabilities), targets = head_outputs([ckpt.head, untrained],
                                                                     batches)
    other_probabilities = (None if other is None
                           else head_outputs([other.head], other_batches)[0][0])
    table = store.table(["image_index", "patient_id", "sex", "age", "view"])
    return Scores(split=split,
                  scored=_as_scored(store, ckpt, targets, probabilities, _rows(store, split, table)),
                  untrained=untrained_probabilities,
                  validation=_scored(store, "validation", ckpt, table),
                  other=other_probabilities, checkpoint=ckpt, compared=other)


def paired_store(store, url, split: str, storage_options: StorageOptions | None = None):
    """The store a second head reads, checked to hold the same images in the same order and
    split, with the same readable rows of ``split``: its scores pair with the first's."""
    from cxrdask.errors import StoreMismatchError

    other = open_store(url, storage_options)
    mine = {k: store.provenance.get(k) for k in ("rows_fingerprint", "n_rows")}
    theirs = {k: other.provenance.get(k) for k in ("rows_fingerprint", "n_rows")}
    # (the second store's, the first's): StoreMismatchError says "store has X, ... asks for Y"
    differences = {key: (theirs[key], mine[key]) for key in mine if mine[key] != theirs[key]}
    if not differences and not np.array_equal(store.read("split"), other.read("split")):
        differences["split"] = ("another split of the same images", "the first store's split")
    if not differences and not np.array_equal(store.rows(split), other.rows(split)):
        differences[f"readable {split} rows"] = (len(other.rows(split)), len(store.rows(split)))
    if differences:
        raise StoreMismatchError(other.url, differences)
    return other


def store_columns(store_findings, head_findings) -> list[int | None]:
    """For each of a head's findings, the store's label column of the same finding (by
    harmonised name, any case), or None where the store's archive does not label it."""
    from cxrdask.archive.findings import harmonise

    column = {harmonise(name).lower(): k for k, name in enumerate(store_findings)}
    return [column.get(harmonise(name).lower()) for name in head_findings]


def shared_findings(store_findings, head_findings) -> tuple[list[str], list[str]]:
    """Which of a head's findings a store labels, and which it does not: what an external
    validation can score, and what it leaves out."""
    columns = store_columns(store_findings, head_findings)
    return ([name for name, k in zip(head_findings, columns, strict=True) if k is not None],
            [name for name, k in zip(head_findings, columns, strict=True) if k is None])


def _as_scored(store, ckpt: Checkpoint, targets: np.ndarray, probabilities: np.ndarray,
               rows: pd.DataFrame) -> Scored:
    """Scores against the store's labels, laid out in the head's findings: a finding the
    store's archive does not label (another archive's head) is missing on every row."""
    heads = list(ckpt.label_names)
    projected = np.full((len(targets), len(heads)), np.nan, dtype=np.float32)
    for k, column in enumerate(store_columns(store.label_names, heads)):
        if column is not None:
            projected[:, k] = targets[:, column]
    known = ~np.isnan(projected)
    return Scored(projected == 1, probabilities, rows, None if known.all() else known,
                  tuple(heads))


def build_report(store, scores: Scores, found: Audit) -> EvaluationReport:
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
        external=external_validation(store, scores.checkpoint))


def external_validation(store, ckpt: Checkpoint) -> str | None:
    """The sentence that says a head is scored on another archive than it was trained on,
    and which of its findings that archive does not label; None for the same archive."""
    trained = (ckpt.provenance.get("archive") or {}).get("kind", "nih")
    here = (store.provenance.get("archive") or {}).get("kind", "nih")
    shared, left_out = shared_findings(store.label_names, ckpt.label_names)
    if trained == here and not left_out:
        return None
    return (f"External validation: a head trained on a {trained} archive, scored on a {here} "
            f"archive, on the {len(shared)} of its {len(ckpt.label_names)} findings this archive "
            "labels" + (f"; left out: {', '.join(left_out)}" if left_out else "") + ".")


def evaluate(
    store,
    checkpoint: str | Checkpoint,
    config: EvaluateConfig | None = None,
    *,
    split: str = "test",
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
    for the thresholds). Intervals come from a bootstrap over patients (images of one
    patient resampled together); subgroups are sex, age band and view position, each with
    its gap to the rest of the split and its under-diagnosis rate; thresholds are chosen on the
    validation split and applied to ``split``. The report states the split, the backbone,
    and whether the archive is synthetic or the weights random (then its numbers are not
    comparable with published ones).

    Parameters
    ----------
    store
        A :class:`FeatureStore` or its URL.
    checkpoint
        A head checkpoint (``head.pt``) trained on this store's backbone.
    split
        ``"test"``, ``"validation"`` or ``"train"``.
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
    scores = score_split(store, checkpoint, split=split, compare_to=compare_to,
                         compare_store=compare_store, storage_options=storage_options)
    found = audit(scores.scored, scores.validation, other=scores.other,
                  resamples=config.bootstrap, seed=config.seed, rule=config.threshold_rule,
                  specificity=config.specificity, expert=expert, stratified=config.stratified)
    report = build_report(store, scores, found)
    if config.boxes is not None and config.images is not None:
        from cxrdask.evaluation.localisation import localise
        from cxrdask.extract.cluster import session_client

        report.localisation = localise(
            store, str(scores.checkpoint.path), config.boxes, config.images, split=split,
            client=client or session_client(config.n_workers, announce=False),
            weights=config.weights, storage_options=storage_options, seed=config.seed)
    if out_dir is not None:
        report.files = write_report(report, scores, out_dir)
    return report


def _rows(store, split: str, table: pd.DataFrame) -> pd.DataFrame:
    """The split's readable rows of ``table`` (the store's per-row columns), in the order
    batches yield them."""
    return table.iloc[store.rows(split)].reset_index(drop=True)


def _scored(store, split: str, ckpt: Checkpoint, table: pd.DataFrame) -> Scored | None:
    """The head's probabilities on ``split`` (None where the split is empty)."""
    batches = FeatureBatches(store, split, 4096, shuffle=False,
                             demographics=tuple(ckpt.input["demographics"]))
    if batches.n_rows == 0:
        return None
    (probabilities,), targets = head_outputs([ckpt.head], batches)
    return _as_scored(store, ckpt, targets, probabilities, _rows(store, split, table))


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
    (out / "report.json").write_text(json.dumps(
        {**report.to_json(), "checkpoint": ckpt.path, "backbone_identity": ckpt.backbone},
        indent=2))
    caveat = report.caveat_line
    files = [str(out / "report.md"), str(out / "report.json"),
             save_figure(roc_figure(targets, probabilities, caveat, scores.scored.labels,
                                    scores.scored.known), out / "roc.png"),
             save_figure(auc_bars_figure(report.table, caveat), out / "auc_bars.png"),
             save_figure(reliability_figure(targets, probabilities, caveat, scores.scored.labels,
                                            scores.scored.known), out / "reliability.png")]
    if report.audit is not None:
        files.append(save_figure(subgroup_gap_figure(report.audit.subgroups, caveat),
                                 out / "subgroup_gaps.png"))
    return files
