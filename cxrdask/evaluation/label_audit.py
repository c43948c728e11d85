"""Label errors found: which stored labels a model trained without them disagrees with most.

ChestX-ray14's labels were mined from reports and are known to be noisy. The maintained way
to rank suspect labels is cleanlab's, over out-of-fold probabilities: every labelled row is
predicted by a head that never saw it. :func:`audit_labels` splits the store's patients
into ``folds`` (a patient's images in one fold), trains one head per fold on the other
folds (one Dask task each, side by side), predicts the fold's rows, and then, finding by
finding over the rows that label it, asks cleanlab for each label's quality score
(``cleanlab.rank.get_label_quality_scores``, self-confidence: the out-of-fold probability
of the given label) and whether it is an issue (``cleanlab.filter.find_label_issues``,
pruned by the estimated noise rate). One finding at a time is one-vs-rest, as cleanlab's
multi-label functions compute it, and lets a finding an archive leaves unlabelled for some
rows be audited on the rows it labels (tests/test_label_audit.py holds the two equal where
every label is known).

The ranking (lowest score first) goes to ``label_issues.csv``, a summary and the top
suspects to ``label_audit.md``, their thumbnails to ``suspects.png``; with Google's expert
labels of NIH images, the report says how many of the top suspects the experts read and
how many of those they label otherwise than the store.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.splits import TEST, TRAIN, VALIDATION
from cxrdask.config import TrainConfig
from cxrdask.errors import CxrDaskError, MissingExtraError, OptionError
from cxrdask.head.batches import open_store
from cxrdask.store.features import STATUS_OK, FeatureStore
from cxrdask.store.targets import check_output_folder

VALIDATION_SHARE = 0.1  # of the training folds' patients, to choose each head's epoch
TOP_SHOWN = 24  # suspects in the report's table and picture


def _cleanlab():
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise MissingExtraError("the label audit needs cleanlab: pip install "
                                "'cxrdask[label-audit]'") from None
    return cleanlab


@dataclass
class LabelAudit:
    """What :func:`audit_labels` found.

    Attributes
    ----------
    issues : pandas.DataFrame
        Every audited (image, finding) label, most suspect first: ``image``, ``row``,
        ``patient_id``, ``finding``, ``given`` (0 or 1), ``probability`` (out of fold),
        ``score`` (cleanlab's label quality, 0 to 1) and ``issue`` (cleanlab's verdict).
    per_finding : pandas.DataFrame
        ``finding``, ``labelled`` rows, ``positives`` and ``issues`` per finding; findings
        with too few positives or negatives to audit say so in ``note``.
    folds : int
    expert : dict or None
        With expert labels: how many of the top suspects the experts read, and how many of
        those they label otherwise than the store.
    files : list of str
    """

    issues: pd.DataFrame
    per_finding: pd.DataFrame
    folds: int
    expert: dict | None = None
    files: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"Out-of-fold probabilities from {self.folds} heads (folds by patient), ranked "
                 "with cleanlab's label quality score (self-confidence; lowest first) and its "
                 "issue filter (pruned by the estimated noise rate).", "",
                 "| finding | labelled rows | positives | issues found | note |",
                 "|---|---:|---:|---:|---|"]
        for row in self.per_finding.itertuples():
            lines.append(f"| {row.finding} | {row.labelled:,} | {row.positives:,} | "
                         f"{row.issues:,} | {row.note} |")
        if self.expert is not None:
            e = self.expert
            lines += ["", f"Expert labels (Google 2019): of the top {e['top']} suspects of the "
                          f"findings they read, the experts read {e['read']}, and label "
                          f"{e['disagree']} of them otherwise than the store "
                          f"({e['disagree'] / max(e['read'], 1):.0%})."]
        lines += ["", "| rank | image | finding | given | out-of-fold probability | score | issue |",
                  "|---:|---|---|---:|---:|---:|---|"]
        for rank, row in enumerate(self.issues.head(TOP_SHOWN).itertuples(), start=1):
            lines.append(f"| {rank} | {row.image} | {row.finding} | {row.given} | "
                         f"{row.probability:.3f} | {row.score:.3f} | {'yes' if row.issue else ''} |")
        return "\n".join(lines) + "\n"


def patient_folds(patients: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold (0 to ``folds`` - 1) per row, every image of a patient in one fold: the
    patients shuffled with ``seed`` and dealt out in turn."""
    unique = np.unique(patients)
    order = np.random.default_rng([seed, 5]).permutation(len(unique))
    fold_of = np.empty(len(unique), dtype=np.int64)
    fold_of[order] = np.arange(len(unique)) % folds
    return fold_of[np.searchsorted(unique, patients)]


def fold_splits(fold: np.ndarray, k: int, patients: np.ndarray, seed: int = 0) -> np.ndarray:
    """The split codes of fold ``k``'s head: its own rows test, a tenth of the other folds'
    patients validation (to choose the epoch), the rest train."""
    codes = np.full(len(fold), TRAIN, dtype=np.int8)
    codes[fold == k] = TEST
    others = np.unique(patients[fold != k])
    chosen = np.random.default_rng([seed, 6, k]).permutation(others)
    held = chosen[:max(1, round(VALIDATION_SHARE * len(others)))]
    codes[(fold != k) & np.isin(patients, held)] = VALIDATION
    return codes


def fold_task(url: str, storage_options: StorageOptions | None, codes: np.ndarray,
              config: TrainConfig, out_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """One fold, as a Dask task: a head trained on the store read with ``codes`` as its
    splits, then its probabilities for the fold's own (test) rows: (rows, probabilities)."""
    import torch

    from cxrdask.evaluation.scoring import head_outputs, split_batches
    from cxrdask.head.model import load_checkpoint
    from cxrdask.head.train import train_head

    torch.set_num_threads(1)
    store = FeatureStore.open(url, storage_options=storage_options).with_splits(codes)
    result = train_head(store, config, out_dir, progress=False, plot=False)
    ckpt = load_checkpoint(result.checkpoint)
    batches = split_batches(store, "test", ckpt, config.views)
    (probabilities,), _ = head_outputs([ckpt.head], batches)
    return np.flatnonzero(batches.plan.keep), probabilities


def audit_labels(store: FeatureStore | str, out_dir: str | os.PathLike, *, folds: int = 5,
                 config: TrainConfig | None = None, expert_labels: str | None = None,
                 client=None, seed: int = 0,
                 storage_options: StorageOptions | None = None) -> LabelAudit:
    """Rank a store's labels by how likely each is wrong; write the ranking and a report.

    Parameters
    ----------
    store
        A feature store (or its URL) whose workers can reach it.
    out_dir
        A new or empty folder: ``label_issues.csv``, ``label_audit.md``,
        ``label_audit.json``, ``suspects.png`` and the fold heads in ``heads/``.
    folds
        Heads trained, each predicting the patients it did not see (2 or more).
    config
        How each head trains (:class:`~cxrdask.config.TrainConfig`), without positives
        weighted in the loss whatever it says: cleanlab reads the probabilities as
        calibrated.
    expert_labels
        Google's 2019 expert labels of NIH images: the report says how many top suspects
        the experts read and how many of those they label otherwise.
    client
        Where the heads train (a Dask client; None: the session's cluster).
    seed
        Of the folds.
    """
    from cxrdask.runtime.cluster import session_client

    cleanlab = _cleanlab()
    if isinstance(folds, bool) or folds < 2:
        raise OptionError(f"folds must be 2 or more (a head per fold), not {folds!r}")
    opened = open_store(store, storage_options)
    out = Path(out_dir)
    check_output_folder(str(out), "the audit folder", {"the store": opened.url})
    expert = None
    if expert_labels is not None:  # checked before any head trains
        from cxrdask.archive.expert_labels import read_expert_labels

        expert = read_expert_labels(expert_labels, storage_options)
    # Probabilities as they are, not moved toward the positives by a weighted loss: cleanlab
    # reads them as calibrated (with positives weighted, a 200-image demo had cleanlab call
    # up to 125 of 199 labels of a finding errors).
    config = replace(config or TrainConfig(), pos_weight=False)
    patients = opened.read("patient_id")
    fold = patient_folds(patients, folds, seed)
    client = client if client is not None else session_client(announce=False)
    token = uuid.uuid4().hex[:8]
    futures = [client.submit(fold_task, opened.url, storage_options,
                             fold_splits(fold, k, patients, seed), config,
                             str((out / "heads" / f"fold-{k}").resolve()), pure=False,
                             key=f"label-audit-fold-{k}-{token}")
               for k in range(folds)]
    probabilities = np.full((opened.n_rows, len(opened.label_names)), np.nan, dtype=np.float64)
    for rows, predicted in client.gather(futures):
        probabilities[rows] = predicted
    issues, per_finding = rank_label_issues(opened, probabilities, cleanlab)
    audit = LabelAudit(issues, per_finding, folds)
    if expert is not None:
        audit.expert = _expert_agreement(issues, expert)
    audit.files = _write(audit, opened, out)
    return audit


def rank_label_issues(store: FeatureStore, probabilities: np.ndarray, cleanlab=None
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """cleanlab's quality score and issue verdict for every label that has an out-of-fold
    probability, finding by finding; the labels ranked most suspect first."""
    from cxrdask.archive.findings import float_labels

    cleanlab = cleanlab or _cleanlab()
    labels = float_labels(store.read("labels"))
    readable = store.read("status") == STATUS_OK
    names = store.read("image_index")
    patients = store.read("patient_id")
    parts, summary = [], []
    for k, finding in enumerate(store.label_names):
        rows = np.flatnonzero(readable & np.isfinite(labels[:, k]) & np.isfinite(probabilities[:, k]))
        given = labels[rows, k].astype(np.int64)
        positives = int(given.sum())
        if min(positives, len(given) - positives) < 2:
            summary.append({"finding": finding, "labelled": len(rows), "positives": positives,
                            "issues": 0, "note": "too few positives or negatives to audit"})
            continue
        p = np.clip(probabilities[rows, k], 1e-6, 1 - 1e-6)
        pred_probs = np.column_stack([1 - p, p])
        score = cleanlab.rank.get_label_quality_scores(given, pred_probs, method="self_confidence")
        issue = cleanlab.filter.find_label_issues(given, pred_probs, filter_by="prune_by_noise_rate")
        parts.append(pd.DataFrame({"image": names[rows], "row": rows,
                                   "patient_id": patients[rows], "finding": finding,
                                   "given": given, "probability": probabilities[rows, k],
                                   "score": score, "issue": issue}))
        summary.append({"finding": finding, "labelled": len(rows), "positives": positives,
                        "issues": int(issue.sum()), "note": ""})
    if not parts:
        raise CxrDaskError(f"{store.url}: no finding has enough labelled rows to audit")
    issues = pd.concat(parts, ignore_index=True)
    issues = issues.sort_values(["score", "row"], kind="stable").reset_index(drop=True)
    return issues, pd.DataFrame(summary)


def _expert_agreement(issues: pd.DataFrame, expert: pd.DataFrame, top: int = 100) -> dict:
    """Of the ``top`` suspects among the findings the experts read, how many they read, and
    how many of those they label otherwise than the store."""
    from cxrdask.archive.expert_labels import EXPERT_TO_NIH

    finding_of = {nih: theirs for theirs, ours in EXPERT_TO_NIH.items() for nih in ours}
    shown = issues[issues["finding"].isin(list(finding_of))].head(top)
    table = expert.set_index("image_index")
    read = disagree = 0
    for row in shown.itertuples():
        if row.image in table.index:
            read += 1
            disagree += int(bool(table.at[row.image, finding_of[row.finding]]) != bool(row.given))
    return {"top": len(shown), "read": read, "disagree": disagree}


def _write(audit: LabelAudit, store: FeatureStore, out: Path) -> list[str]:
    from cxrdask.plots import save_figure, suspects_figure

    out.mkdir(parents=True, exist_ok=True)
    audit.issues.to_csv(out / "label_issues.csv", index=False)
    (out / "label_audit.md").write_text(f"# Suspect labels in {store.url}\n\n" + audit.to_markdown())
    (out / "label_audit.json").write_text(json.dumps(
        {"store": store.url, "folds": audit.folds, "expert": audit.expert,
         "per_finding": json.loads(audit.per_finding.to_json(orient="records")),
         "top": json.loads(audit.issues.head(TOP_SHOWN).to_json(orient="records"))}, indent=2))
    top = audit.issues.head(TOP_SHOWN)
    thumbnails = (np.stack([store.read("thumbnail", int(row)) for row in top["row"]])
                  if store.has_thumbnails and len(top) else None)
    figure = save_figure(suspects_figure(top, thumbnails), out / "suspects.png")
    return [str(out / "label_issues.csv"), str(out / "label_audit.md"),
            str(out / "label_audit.json"), figure]


__all__ = ["LabelAudit", "audit_labels", "fold_splits", "fold_task", "patient_folds",
           "rank_label_issues"]
