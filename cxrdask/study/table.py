"""The cross-archive table in one call: how well a head travels between archives.

As cross-archive papers report it (Zech et al., PLOS Medicine 2018): one head trains on
every store and is scored on each archive's own test split (internal); then each archive is
left out in turn, a head trains on the others, and it is scored on the left-out archive's
whole store (external: every row unseen). Each score is per finding, with its patient
bootstrap interval, on the findings the scored archive labels; a finding no other archive
labels cannot be scored externally and is said to be so, never given a number. The heads
train as Dask tasks, in parallel where the cluster has workers to spare. Beside the table,
every pair of archives is measured for shift (:mod:`cxrdask.study.shift`): how well a
classifier tells them apart in feature space, before any head.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import harmonise
from cxrdask.choices import ScoredSplit
from cxrdask.config import EvaluateConfig, TrainConfig
from cxrdask.errors import OptionError
from cxrdask.evaluation.report import EvaluationReport, evaluate
from cxrdask.head.batches import open_store
from cxrdask.head.train import train_task
from cxrdask.head.union import check_same_features
from cxrdask.store.features import FeatureStore
from cxrdask.store.targets import check_output_folder
from cxrdask.study.shift import ShiftReport, measure_shift

CITATION = ("Zech J.R. et al., Variable generalization performance of a deep learning model to "
            "detect pneumonia in chest radiographs: a cross-sectional study, PLOS Medicine 2018")


@dataclass
class StudyResult:
    """A study's scores: one row per archive and finding (``table``), the per-archive summary
    (``summary``), the heads and reports it wrote, and its files."""

    table: pd.DataFrame
    summary: pd.DataFrame
    heads: dict[str, str]
    reports: dict[str, EvaluationReport] = field(default_factory=dict, repr=False)
    files: list[str] = field(default_factory=list)
    # Each pair of archives: how far apart they are before any head (cxrdask shift).
    shifts: dict[tuple[str, str], ShiftReport] = field(default_factory=dict, repr=False)

    def to_markdown(self) -> str:
        """The generalisation table: each archive's internal and external mean AUC over the
        same findings, then every finding's AUCs with their intervals."""
        lines = ["| archive | rows scored (internal, external) | findings compared | internal AUC "
                 "| external AUC | external - internal |", "|---|---|---:|---:|---:|---:|"]
        for row in self.summary.itertuples():
            lines.append(f"| {row.archive} | {row.internal_rows:,}, {row.external_rows:,} | "
                         f"{row.findings} | {_number(row.internal_auc)} | "
                         f"{_number(row.external_auc)} | {_number(row.difference, sign=True)} |")
        lines += ["", "| archive | finding | internal AUC (95% CI) | external AUC (95% CI) |",
                  "|---|---|---|---|"]
        for row in self.table.itertuples():
            lines.append(f"| {row.archive} | {row.finding} | "
                         f"{_with_interval(row.internal_auc, row.internal_low, row.internal_high)} | "
                         f"{_with_interval(row.external_auc, row.external_low, row.external_high)} |")
        if self.shifts:
            lines += ["", "How far apart the archives are, before any head: a domain classifier on "
                      "the features, cross-validated by patient (0.5: they cannot be told apart; "
                      "1: always). Each pair's prevalences, ages, sexes and views are in "
                      "`shift/`.", "", "| archives | rows | domain AUC (95% CI) |",
                      "|---|---|---|"]
            for (a, b), shift in self.shifts.items():
                lines.append(f"| {a} and {b} | {shift.rows[0]:,} and {shift.rows[1]:,} | "
                             f"{shift.separability} |")
        notes = ["Internal: the head trained on every archive, scored on this archive's test split. "
                 "External: a head trained on the other archives only, scored on every labelled "
                 "row of this archive (split all).",
                 "Means are over the findings both scores have (a finding only this archive "
                 "labels has no external score: not computed, not zero).",
                 f"The table is the one cross-archive studies report: {CITATION}."]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"summary": json.loads(self.summary.to_json(orient="records")),
                "per_finding": json.loads(self.table.to_json(orient="records")),
                "shift": [{"archives": [a, b], **shift.to_json()}
                          for (a, b), shift in self.shifts.items()],
                "heads": self.heads, "citation": CITATION}


def _number(value: float, sign: bool = False) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def _with_interval(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3f}" + (f" ({low:.3f}-{high:.3f})" if np.isfinite(low) else "")


def archive_names(stores: Sequence[FeatureStore]) -> list[str]:
    """Each store's name in the table: its archive kind, or its folder's name where two
    stores hold one kind."""
    kinds = [(s.provenance.get("archive") or {}).get("kind", "nih") for s in stores]
    return [kind if kinds.count(kind) == 1 else s.url.rstrip("/").rsplit("/", 1)[-1]
            for kind, s in zip(kinds, stores, strict=True)]


def run_study(
    stores: Sequence[FeatureStore | str],
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    evaluate_config: EvaluateConfig | None = None,
    *,
    client=None,
    storage_options: StorageOptions | None = None,
) -> StudyResult:
    """Train on every store and on each leave-one-out set, score internally and externally,
    measure the shift between every pair of stores, and write ``study.md``, ``study.json``
    and ``study.png`` in ``out_dir`` (each pair's shift in ``shift/A-B/``).

    Parameters
    ----------
    stores
        Two or more feature stores of one backbone (refused before any training otherwise).
    out_dir
        A new or empty folder: the tables, the figure, ``heads/NAME/head.pt`` and
        ``reports/``.
    config
        How every head trains (:class:`~cxrdask.config.TrainConfig`; its ``views`` also
        select the scored rows unless ``evaluate_config`` says otherwise).
    evaluate_config
        How each score is audited (:class:`~cxrdask.config.EvaluateConfig`: bootstrap
        resamples, seed, views); the shifts' intervals take its resamples and seed.
    client
        Where the heads train (a Dask client; None: the session's cluster): one task each,
        at once.
    storage_options
        fsspec options.
    """
    from cxrdask.runtime.cluster import session_client

    opened = [open_store(s if isinstance(s, FeatureStore) else str(s), storage_options)
              for s in stores]
    if len(opened) < 2:
        raise OptionError("a study needs two stores or more: it leaves each out in turn")
    check_same_features(opened)
    config = config or TrainConfig()
    evaluate_config = evaluate_config or EvaluateConfig(views=config.views)
    out = Path(out_dir)
    check_output_folder(str(out), "the study folder",
                        {f"the store {k + 1}": s.url for k, s in enumerate(opened)})
    names = archive_names(opened)
    plans = {"all": [s.url for s in opened],
             **{f"without-{name}": [s.url for k, s in enumerate(opened) if k != left]
                for left, name in enumerate(names)}}
    client = client if client is not None else session_client(announce=False)
    futures = {key: client.submit(train_task, urls, storage_options, config,
                                  str((out / "heads" / key).resolve()), pure=False)
               for key, urls in plans.items()}
    heads = {key: future.result()["checkpoint"] for key, future in futures.items()}
    reports, records = {}, []
    for store, name in zip(opened, names, strict=True):
        internal = _score(store, heads["all"], "test", evaluate_config,
                          out / "reports" / f"{name}-internal", storage_options)
        external = _score(store, heads[f"without-{name}"], "all", evaluate_config,
                          out / "reports" / f"{name}-external", storage_options)
        reports[f"{name}-internal"], reports[f"{name}-external"] = internal, external
        records.extend(_rows(name, internal, external))
    shifts = {(names[i], names[j]): measure_shift(
                  opened[i], opened[j], out / "shift" / f"{names[i]}-{names[j]}",
                  resamples=evaluate_config.bootstrap, seed=evaluate_config.seed)
              for i, j in itertools.combinations(range(len(opened)), 2)}
    table = pd.DataFrame(records)
    result = StudyResult(table=table, summary=_summary(table, reports, names), heads=heads,
                         reports={k: v for k, v in reports.items() if v is not None},
                         shifts=shifts)
    result.files = _write(result, out)
    return result


def _score(store: FeatureStore, head: str, split: ScoredSplit, config: EvaluateConfig, out: Path,
           storage_options: StorageOptions | None) -> EvaluationReport | None:
    """One report; None where the store has no rows of that split to score (a CheXpert store
    made from train.csv alone has no test split): the table then says n/a."""
    from cxrdask.errors import ScoreError

    try:
        return evaluate(store, head, config, split=split, out_dir=out,
                        storage_options=storage_options)
    except ScoreError:
        return None


def _aucs(report: EvaluationReport | None) -> pd.DataFrame:
    """Per finding: AUC and its interval (empty where there is no report)."""
    if report is None:
        return pd.DataFrame(columns=["finding", "auc", "low", "high"])
    frame = report.table[["label", "auc"]].rename(columns={"label": "finding"})
    frame["label"] = frame["finding"]
    # One name per finding whichever head scored it (CheXpert's Pleural Effusion is NIH's
    # Effusion): the harmonised one.
    frame["finding"] = [harmonise(name) for name in frame["finding"]]
    if report.audit is not None and report.audit.resamples:
        bounds = report.audit.auc.set_index("label")[["auc_low", "auc_high"]]
        frame["low"] = frame["label"].map(bounds["auc_low"])
        frame["high"] = frame["label"].map(bounds["auc_high"])
    else:
        frame["low"] = frame["high"] = np.nan
    return frame


def _rows(name: str, internal: EvaluationReport | None,
          external: EvaluationReport | None) -> list[dict[str, Any]]:
    """One row per finding this archive labels: its internal and external AUC."""
    inside, outside = _aucs(internal).set_index("finding"), _aucs(external).set_index("finding")
    findings = list(dict.fromkeys([*inside.index, *outside.index]))
    rows = []
    for finding in findings:
        row = {"archive": name, "finding": finding}
        for side, scores in (("internal", inside), ("external", outside)):
            values = scores.loc[finding] if finding in scores.index else None
            row[f"{side}_auc"] = float(values["auc"]) if values is not None else np.nan
            row[f"{side}_low"] = float(values["low"]) if values is not None else np.nan
            row[f"{side}_high"] = float(values["high"]) if values is not None else np.nan
        rows.append(row)
    return rows


def _summary(table: pd.DataFrame, reports: dict[str, EvaluationReport | None],
             names: list[str]) -> pd.DataFrame:
    """Per archive: rows scored, and the mean internal and external AUC over the findings
    both scores have."""
    records = []
    for name in names:
        rows = table[table["archive"] == name]
        both = rows[np.isfinite(rows["internal_auc"]) & np.isfinite(rows["external_auc"])]
        internal, external = reports.get(f"{name}-internal"), reports.get(f"{name}-external")
        mean_in = float(both["internal_auc"].mean()) if len(both) else float("nan")
        mean_out = float(both["external_auc"].mean()) if len(both) else float("nan")
        records.append({"archive": name, "findings": len(both),
                        "internal_rows": internal.n_rows if internal else 0,
                        "external_rows": external.n_rows if external else 0,
                        "internal_auc": mean_in, "external_auc": mean_out,
                        "difference": mean_out - mean_in})
    return pd.DataFrame(records)


def _write(result: StudyResult, out: Path) -> list[str]:
    from cxrdask.plots import save_figure, study_figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text("# A study across archives\n\n" + result.to_markdown())
    (out / "study.json").write_text(json.dumps(result.to_json(), indent=2))
    figure = save_figure(study_figure(result.summary), out / "study.png")
    return [str(out / "study.md"), str(out / "study.json"), figure]


__all__ = ["CITATION", "StudyResult", "archive_names", "run_study"]
