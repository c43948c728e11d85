"""How far apart two archives are, before any head is trained on them: dataset shift, measured.

A domain classifier (logistic regression on the stores' features, standardised) learns to
tell one store's images from the other's; its cross-validated AUC, with folds by patient so
that no patient is both learnt and scored, says how separable the archives are in the
backbone's feature space (0.5: not at all; near 1: any head will meet images unlike those
it learnt). Its 95% interval is a bootstrap over patients (the evaluation's own,
:func:`~cxrdask.evaluation.bootstrap.bootstrap_aucs`). Beside it, what differs in plain
terms: each shared finding's prevalence, and the age, sex and view mix of each store.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import float_labels, harmonise
from cxrdask.archive.views import view_counts
from cxrdask.evaluation.bootstrap import Interval, bootstrap_aucs, percentile_interval
from cxrdask.head.batches import open_store
from cxrdask.head.union import check_same_features
from cxrdask.store.features import STATUS_OK, FeatureStore

DEFAULT_SAMPLE = 20_000  # readable rows drawn from each store (the classifier's cost)


@dataclass
class ShiftReport:
    """Two stores compared: the domain classifier's AUC (``separability``), each shared
    finding's prevalence in each, and their demographics."""

    names: tuple[str, str]
    separability: Interval
    rows: tuple[int, int]
    prevalence: pd.DataFrame
    demographics: pd.DataFrame
    files: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        a, b = self.names
        lines = [f"Domain classifier ({a} against {b}), cross-validated by patient on "
                 f"{self.rows[0]:,} and {self.rows[1]:,} rows: **AUC {self.separability}** "
                 "(0.5: the archives cannot be told apart in these features; 1: always).", "",
                 f"| finding | prevalence {a} | prevalence {b} |", "|---|---:|---:|"]
        for row in self.prevalence.itertuples():
            lines.append(f"| {row.finding} | {row.prevalence_a:.3f} | {row.prevalence_b:.3f} |")
        lines += ["", f"| | {a} | {b} |", "|---|---:|---:|"]
        for row in self.demographics.itertuples():
            lines.append(f"| {row.measure} | {row.a} | {row.b} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {"stores": list(self.names), "rows": list(self.rows),
                "domain_auc": self.separability.estimate,
                "domain_auc_interval": [self.separability.low, self.separability.high],
                "prevalence": json.loads(self.prevalence.to_json(orient="records")),
                "demographics": json.loads(self.demographics.to_json(orient="records"))}


def _sample(store: FeatureStore, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero(store.read("status") == STATUS_OK)
    return np.sort(rng.choice(rows, n, replace=False)) if len(rows) > n else rows


def _features(store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """The features of ``rows``, read chunk by chunk (only the chunks holding them)."""
    array = store.array("features")
    out = np.empty((len(rows), store.feature_dim), dtype=np.float32)
    chunks = rows // store.chunk_rows
    for chunk in np.unique(chunks):
        start, stop = store.chunk_bounds(int(chunk))
        mine = chunks == chunk
        out[mine] = np.asarray(array[start:stop])[rows[mine] - start]
    return out


def domain_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int = 5,
               resamples: int = 1000, seed: int = 0) -> Interval:
    """The cross-validated AUC of a logistic regression telling ``y`` (0 or 1) from ``x``,
    folds by ``groups`` (patients), with a patient-bootstrap interval."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, groups=groups, cv=split, method="predict_proba")[:, 1]
    estimate = float(roc_auc_score(y, scores))
    if not resamples:
        return Interval(estimate, float("nan"), float("nan"))
    samples = bootstrap_aucs(y[:, None], {"domain": scores[:, None]}, groups,
                             {"all": np.ones(len(y), bool)}, n_resamples=resamples, seed=seed)
    return percentile_interval(estimate, samples[("domain", "all")][:, 0])


def _prevalence(stores: list[FeatureStore], rows: list[np.ndarray]) -> pd.DataFrame:
    """Each finding both stores label (by harmonised name): its share of positives among the
    rows that label it, in each store."""
    shares = []
    for store, chosen in zip(stores, rows, strict=True):
        labels = float_labels(store.read("labels")[chosen])
        shares.append({harmonise(name): float(np.nanmean(labels[:, k]))
                       if np.isfinite(labels[:, k]).any() else float("nan")
                       for k, name in enumerate(store.label_names)})
    shared = [name for name in shares[0] if name in shares[1]]
    return pd.DataFrame({"finding": shared, "prevalence_a": [shares[0][n] for n in shared],
                         "prevalence_b": [shares[1][n] for n in shared]})


def _demographics(stores: list[FeatureStore], rows: list[np.ndarray]) -> pd.DataFrame:
    """Age (median and quartiles, where known), sex and view-family shares of each store."""
    columns = []
    for store, chosen in zip(stores, rows, strict=True):
        age = store.read("age")[chosen].astype(float)
        age = age[age >= 0]
        sex = np.asarray(store.read("sex")[chosen], dtype=object)
        views = view_counts(store.read("view")[chosen])
        column = {"age, median (quartiles)": (f"{np.median(age):.0f} ({np.percentile(age, 25):.0f}-"
                                              f"{np.percentile(age, 75):.0f})") if len(age) else "n/a",
                  "female": f"{np.mean(sex == 'F'):.1%}", "male": f"{np.mean(sex == 'M'):.1%}"}
        column.update({f"view {family}": f"{n / max(len(chosen), 1):.1%}" for family, n in views.items()})
        columns.append(column)
    return pd.DataFrame({"measure": list(columns[0]), "a": list(columns[0].values()),
                         "b": [columns[1][k] for k in columns[0]]})


def measure_shift(a: FeatureStore | str, b: FeatureStore | str, out_dir: str | os.PathLike | None = None,
                  *, sample: int = DEFAULT_SAMPLE, resamples: int = 1000, seed: int = 0,
                  storage_options: StorageOptions | None = None) -> ShiftReport:
    """How separable two stores are in feature space, and how their findings' prevalence and
    demographics differ; with ``out_dir``: ``shift.md``, ``shift.json`` and ``shift.png``.

    Up to ``sample`` readable rows of each store are used (drawn with ``seed``). The stores
    must hold one backbone's features (refused before any read otherwise).
    """
    stores = [open_store(s if isinstance(s, FeatureStore) else str(s), storage_options)
              for s in (a, b)]
    check_same_features(stores)
    rng = np.random.default_rng(seed)
    rows = [_sample(store, sample, rng) for store in stores]
    x = np.concatenate([_features(store, chosen) for store, chosen in zip(stores, rows, strict=True)])
    y = np.repeat([0, 1], [len(rows[0]), len(rows[1])])
    patients = np.concatenate([np.char.add(f"{k}:", store.read("patient_id")[chosen].astype(str))
                               for k, (store, chosen) in enumerate(zip(stores, rows, strict=True))])
    names = tuple(s.url.rstrip("/").rsplit("/", 1)[-1] for s in stores)
    report = ShiftReport(names=(names[0], names[1]), rows=(len(rows[0]), len(rows[1])),
                         separability=domain_auc(x, y, patients, resamples=resamples, seed=seed),
                         prevalence=_prevalence(stores, rows), demographics=_demographics(stores, rows))
    if out_dir is not None:
        from cxrdask.plots import save_figure, shift_figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "shift.md").write_text(f"# {names[0]} and {names[1]}\n\n" + report.to_markdown())
        (out / "shift.json").write_text(json.dumps(report.to_json(), indent=2))
        report.files = [str(out / "shift.md"), str(out / "shift.json"),
                        save_figure(shift_figure(report.prevalence, report.names, str(report.separability)),
                                    out / "shift.png")]
    return report


__all__ = ["DEFAULT_SAMPLE", "ShiftReport", "domain_auc", "measure_shift"]
