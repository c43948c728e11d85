"""Evaluation (per-disease ROC AUC beside published results) and single-image prediction."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from ._fs import StorageOptions
from .batches import FeatureBatches, open_store
from .head import Checkpoint, DiagnosisHead, load_checkpoint, new_head
from .labels import LABELS

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
        empty = np.zeros((0, len(LABELS)))
        return [empty for _ in heads], empty
    return [np.concatenate(p) for p in probabilities], np.concatenate(targets)


def auc_per_label(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """ROC AUC per disease; NaN where the split has only one class for that disease."""
    out = np.full(targets.shape[1], np.nan)
    for i in range(targets.shape[1]):
        if 0 < targets[:, i].sum() < len(targets):
            out[i] = roc_auc_score(targets[:, i], probabilities[:, i])
    return out


FEW_POSITIVES = 10  # below this, a disease's AUC moves a lot with one image
FAR_FROM_CHANCE = 0.4  # an untrained head this far from AUC 0.5 is worth a sentence
# Why a synthetic sign is easy even for untrained heads (see cxrdask.synthetic.render_image).
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
        head.append(f"Split: **{self.split}** ({self.n_rows} images); {self.split_description}.  ")
        if self.backbone:
            head.append(f"Backbone: {self.backbone}.  ")
        head.append(f"Means are over the same {int(kept.sum())} of {len(self.table)} diseases in "
                    "every column (those with positive and negative images in the split).\n")
        lines = ["| disease | positives | AUC | untrained head | Wang 2017 | CheXNet |",
                 "|---|---:|---:|---:|---:|---:|"]
        for row in shown.itertuples():
            cells = [f"{v:.3f}" if np.isfinite(v) else "n/a"
                     for v in (row.auc, row.auc_untrained, row.wang2017, row.chexnet)]
            lines.append(f"| {row.label} | {row.positives} | " + " | ".join(cells) + " |")
        notes = [*self.notes(),
                 "Published results use other splits: " + "; ".join(CITATIONS.values()) + ".",
                 "n/a: the split has no positive (or no negative) image of that disease."]
        return ("\n".join(head) + "\n" + "\n".join(lines) + "\n\n"
                + "\n".join(f"- {n}" for n in notes) + "\n")

    def to_json(self) -> dict:
        """The report as plain values (what ``report.json`` holds)."""
        return {
            "caveats": self.caveats, "comparable_with_published": not self.caveats,
            "split": self.split, "split_description": self.split_description, "rows": self.n_rows,
            "backbone": self.backbone, "mean_over": self.mean_over, "mean_auc": self.mean_auc,
            "mean_auc_untrained": self.mean_auc_untrained,
            "mean_wang2017": self._mean("wang2017"), "mean_chexnet": self._mean("chexnet"),
            "notes": self.notes(), "citations": CITATIONS,
            "per_label": json.loads(self.table.to_json(orient="records")),
        }


def evaluate(
    store,
    checkpoint: str | Checkpoint,
    *,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    storage_options: StorageOptions | None = None,
) -> EvaluationReport:
    """Per-disease ROC AUC on ``split`` for a checkpoint and for its untrained head.

    Read out of core from the store. The report states the split, the backbone, and whether
    the archive is synthetic or the weights random (then its numbers are not comparable with
    published ones); means are over the same diseases in every column.

    Parameters
    ----------
    store
        A :class:`FeatureStore` or its URL.
    checkpoint
        A head checkpoint (``head.pt``) trained on this store's backbone.
    split
        ``"test"``, ``"validation"`` or ``"train"``.
    out_dir
        Where ``report.md``, ``report.json``, ``roc.png`` and ``auc_bars.png`` go; None: no files.
    storage_options
        fsspec options.

    Returns
    -------
    EvaluationReport
        The table (AUC, untrained AUC, Wang 2017, CheXNet per disease), means and notes.

    Raises
    ------
    CheckpointMismatchError
        The head was trained on another backbone or other inputs.
    """
    store = open_store(store, storage_options)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    demographics = tuple(ckpt.input["demographics"])
    batches = FeatureBatches(store, split, 4096, shuffle=False, demographics=demographics)
    ckpt.check_inputs(batches.n_inputs, store.provenance["backbone"])
    # The untrained head: the same seed's initial weights and the same input standardisation.
    untrained = new_head(batches.n_inputs, int(ckpt.config.get("seed", 0)))
    untrained.input_mean.copy_(ckpt.head.input_mean)
    untrained.input_scale.copy_(ckpt.head.input_scale)
    (probabilities, untrained_probabilities), targets = head_outputs([ckpt.head, untrained],
                                                                     batches)
    table = pd.DataFrame({
        "label": list(LABELS),
        "positives": targets.sum(axis=0).astype(int),
        "auc": auc_per_label(targets, probabilities),
        "auc_untrained": auc_per_label(targets, untrained_probabilities),
        "wang2017": [WANG_2017[name] for name in LABELS],
        "chexnet": [CHEXNET_2017[name] for name in LABELS],
    })
    identity = store.provenance["backbone"]
    report = EvaluationReport(table=table, split=split,
                              split_description=store.provenance["split"].get("description", ""),
                              n_rows=len(targets), caveats=report_caveats(store.provenance),
                              backbone=f"{identity['name']} ({identity['weights']})")
    if out_dir is not None:
        from .plots import auc_bars_figure, roc_figure, save_figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(report.to_markdown())
        (out / "report.json").write_text(json.dumps(
            {**report.to_json(), "checkpoint": ckpt.path, "backbone_identity": ckpt.backbone},
            indent=2))
        caveat = report.caveat_line
        report.files = [str(out / "report.md"), str(out / "report.json"),
                        save_figure(roc_figure(targets, probabilities, caveat), out / "roc.png"),
                        save_figure(auc_bars_figure(table, caveat), out / "auc_bars.png")]
    return report
