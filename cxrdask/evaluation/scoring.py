"""Scoring a head on a store: its probabilities on a split, read out of core in one pass, laid
out in the head's findings against the store's labels (a finding the store's archive does not
label is missing on every row), beside the same head untrained and a second head.

What :func:`~cxrdask.evaluation.report.evaluate` audits; callable alone (:func:`score_split`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import finding_columns
from cxrdask.archive.splits import ALL
from cxrdask.archive.views import Views
from cxrdask.choices import ScoredSplit
from cxrdask.errors import CheckpointMismatchError, OptionError, ScoreError
from cxrdask.evaluation.audit import Scored
from cxrdask.head.batches import FeatureBatches, open_store
from cxrdask.head.model import Checkpoint, DiagnosisHead, load_checkpoint, new_head

SCORING_BATCH_ROWS = 4096  # rows a scoring pass reads at once: no gradients, so many


def split_batches(store, split: str, ckpt: Checkpoint, views: Views = "all",
                  exclude_rows: np.ndarray | None = None) -> FeatureBatches:
    """``split``'s rows of ``views`` (but ``exclude_rows``) in store order, with the inputs
    ``ckpt``'s head takes (checked)."""
    batches = FeatureBatches(store, split, SCORING_BATCH_ROWS, shuffle=False, views=views,
                             demographics=tuple(ckpt.input["demographics"]),
                             exclude_rows=exclude_rows)
    ckpt.check_inputs(batches.n_inputs)
    return batches


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
    # The head's findings with no labelled row among the scored ones (another archive's, or
    # all missing here): left out of every array above, so no number is ever given for them.
    not_labelled: tuple[str, ...] = ()
    # The views scored, and the scored split's rows of each view family kept and left out.
    views: dict = field(default_factory=dict)


def trained_archives(ckpt: Checkpoint) -> set[str]:
    """The archive kinds a head was trained on (its checkpoint's stores)."""
    stores = ckpt.provenance.get("stores")
    if stores:  # each store it trained on (heads since the study across archives)
        return {each["archive"] for each in stores}
    return {(ckpt.provenance.get("archive") or {}).get("kind", "nih")}


def default_split(store, ckpt: Checkpoint) -> ScoredSplit:
    """``"all"`` for a store of an archive the head did not train on (external: every row is
    unseen), else ``"test"``."""
    here = (store.provenance.get("archive") or {}).get("kind", "nih")
    return "test" if here in trained_archives(ckpt) else "all"


def score_split(store, checkpoint: str | Checkpoint, *, split: ScoredSplit | None = None,
                compare_to: str | Checkpoint | None = None, compare_store=None,
                storage_options: StorageOptions | None = None, views: Views = "frontal",
                exclude_rows: np.ndarray | None = None) -> Scores:
    """The first step of :func:`evaluate`, callable alone: the heads' probabilities on
    ``split`` (one pass over its chunks, out of core) and on the validation split.

    ``split``: ``"test"``, ``"validation"``, ``"train"``, or ``"all"`` (every readable row);
    None chooses (:func:`default_split`): ``all`` where the store's archive is not one the
    head trained on, else ``test``. A finding of the head that no scored row labels is left
    out of every array (:attr:`Scores.not_labelled`). With ``split="all"`` no validation
    split is scored: its rows are among those scored, so thresholds chosen on them would
    flatter the operating points. ``views`` selects the rows by view
    (:mod:`cxrdask.archive.views`; frontal by default), the validation split's too;
    ``exclude_rows`` (store rows) are left out of every split (images the head trained on).

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
    ScoreError
        ``split`` has no readable rows (the message gives each split's size).
    """
    store = open_store(store, storage_options)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    split = default_split(store, ckpt) if split is None else split
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
    batches = split_batches(store, split, ckpt, views, exclude_rows)
    if batches.n_rows == 0:
        sizes = ", ".join(f"{name} {n}" for name, n in store.split_counts(ok_only=True).items())
        raise ScoreError(f"{store.url} has no readable {split} rows"
                         + ("" if views == "all" else f" of views {views}")
                         + f" to score (readable rows: {sizes}); choose another --split, or all")
    other_batches = (None if other is None
                     else split_batches(other_store, split, other, views, exclude_rows))
    untrained = new_head(batches.n_inputs, int(ckpt.config.get("seed", 0)), len(ckpt.label_names))
    untrained.input_mean.copy_(ckpt.head.input_mean)
    untrained.input_scale.copy_(ckpt.head.input_scale)
    (probabilities, untrained_probabilities), targets = head_outputs([ckpt.head, untrained],
                                                                     batches)
    other_probabilities = (None if other is None or other_batches is None
                           else head_outputs([other.head], other_batches)[0][0])
    table = store.table(["image_index", "patient_id", "sex", "age", "view"])
    projected = _projected(store, ckpt, targets)
    kept = np.flatnonzero(~np.isnan(projected).all(axis=0))  # findings some scored row labels
    names = tuple(ckpt.label_names)
    return Scores(split=split,
                  scored=_as_scored(projected, probabilities, _rows(batches, table), names, kept),
                  untrained=untrained_probabilities[:, kept],
                  validation=(None if split == ALL
                              else _scored(store, "validation", ckpt, table, kept, views,
                                           exclude_rows)),
                  other=None if other_probabilities is None else other_probabilities[:, kept],
                  checkpoint=ckpt, compared=other,
                  not_labelled=tuple(n for k, n in enumerate(names) if k not in set(kept)),
                  views=_views_scored(store, split, views))


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


def shared_findings(store_findings, head_findings) -> tuple[list[str], list[str]]:
    """Which of a head's findings a store labels, and which it does not: what an external
    validation can score, and what it leaves out."""
    columns = finding_columns(store_findings, head_findings)
    return ([name for name, k in zip(head_findings, columns, strict=True) if k is not None],
            [name for name, k in zip(head_findings, columns, strict=True) if k is None])


def _projected(store, ckpt: Checkpoint, targets: np.ndarray) -> np.ndarray:
    """The store's labels laid out in the head's findings (float, NaN missing): a finding the
    store's archive does not label (another archive's head) is missing on every row."""
    heads = list(ckpt.label_names)
    projected = np.full((len(targets), len(heads)), np.nan, dtype=np.float32)
    for k, column in enumerate(finding_columns(store.label_names, heads)):
        if column is not None:
            projected[:, k] = targets[:, column]
    return projected


def _as_scored(projected: np.ndarray, probabilities: np.ndarray, rows: pd.DataFrame,
               names: tuple[str, ...], kept: np.ndarray) -> Scored:
    """Scores against the labels, of the ``kept`` findings only (those the rows label)."""
    projected = projected[:, kept]
    known = ~np.isnan(projected)
    return Scored(projected == 1, probabilities[:, kept], rows, None if known.all() else known,
                  tuple(names[k] for k in kept))


def _rows(batches: FeatureBatches, table: pd.DataFrame) -> pd.DataFrame:
    """The rows ``batches`` read, of ``table`` (the store's per-row columns), in the order
    they yield them."""
    return table.iloc[np.flatnonzero(batches.plan.keep)].reset_index(drop=True)


def _views_scored(store, split: str, views: Views) -> dict:
    """The views asked for, and the split's readable rows of each view family kept and left
    out (what the report says)."""
    from cxrdask.archive.splits import in_split
    from cxrdask.archive.views import view_counts, view_mask
    from cxrdask.store.features import STATUS_OK

    readable = in_split(store.read("split"), split) & (store.read("status") == STATUS_OK)
    view = store.read("view")[readable]
    kept = view_mask(view, views)
    return {"views": views if isinstance(views, str) else list(views),
            "kept": view_counts(view[kept]), "left_out": view_counts(view[~kept])}


def _scored(store, split: str, ckpt: Checkpoint, table: pd.DataFrame, kept: np.ndarray,
            views: Views, exclude_rows: np.ndarray | None) -> Scored | None:
    """The head's probabilities on ``split``, of the ``kept`` findings (None where the split
    is empty)."""
    batches = split_batches(store, split, ckpt, views, exclude_rows)
    if batches.n_rows == 0:
        return None
    (probabilities,), targets = head_outputs([ckpt.head], batches)
    return _as_scored(_projected(store, ckpt, targets), probabilities,
                      _rows(batches, table), tuple(ckpt.label_names), kept)


__all__ = ["SCORING_BATCH_ROWS", "Scores", "default_split", "head_outputs", "paired_store",
           "score_split", "shared_findings", "split_batches", "trained_archives"]
