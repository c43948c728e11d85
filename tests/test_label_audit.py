"""Label errors found: out-of-fold probabilities by patient folds, ranked by cleanlab.

The flips are planted in the store's own labels (as report mining would have got them
wrong), and the audit must find them without being told where they are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

cleanlab = pytest.importorskip("cleanlab")

from cxrdask.config import TrainConfig  # noqa: E402
from cxrdask.evaluation.label_audit import (  # noqa: E402
    audit_labels,
    fold_splits,
    patient_folds,
    rank_label_issues,
)
from cxrdask.store.features import FeatureStore  # noqa: E402
from cxrdask.testing import make_feature_store  # noqa: E402

FINDING = "Infiltration"


def test_folds_keep_a_patients_images_together():
    patients = np.repeat(np.arange(50), np.arange(50) % 4 + 1)
    fold = patient_folds(patients, 5, seed=3)
    for patient in np.unique(patients):
        assert len(np.unique(fold[patients == patient])) == 1
    assert set(fold) == set(range(5))
    codes = fold_splits(fold, 2, patients)
    assert set(codes[fold == 2]) == {2}  # the fold's own rows: its test split
    assert {0, 1} == set(codes[fold != 2])  # the others train, a tenth of patients validate
    for patient in np.unique(patients):
        assert len(np.unique(codes[patients == patient])) == 1


def test_per_finding_ranking_equals_cleanlabs_multilabel_per_class(tmp_path):
    """One finding at a time is what cleanlab's multi-label per-class functions compute:
    the same scores and the same issues where every label is known."""
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores_per_class

    url = str(tmp_path / "s.zarr")
    make_feature_store(url, 400, feature_dim=16, chunk_rows=100, seed=2)
    store = FeatureStore.open(url)
    labels = store.read("labels").astype(int)
    rng = np.random.default_rng(0)
    probabilities = np.clip(labels * 0.55 + rng.random(labels.shape) * 0.5, 0.01, 0.99)
    issues, _ = rank_label_issues(store, probabilities)
    audited = [k for k, name in enumerate(store.label_names) if name in set(issues["finding"])]
    as_lists = [list(np.flatnonzero(row[audited])) for row in labels]
    scores = get_label_quality_scores_per_class(as_lists, probabilities[:, audited],
                                                method="self_confidence")
    flagged = np.asarray(find_multilabel_issues_per_class(as_lists, probabilities[:, audited]))
    for column, k in enumerate(audited):
        mine = issues[issues["finding"] == store.label_names[k]].set_index("row").sort_index()
        np.testing.assert_allclose(mine["score"].to_numpy(), scores[:, column], rtol=1e-6)
        np.testing.assert_array_equal(mine["issue"].to_numpy(), flagged[:, column])


@pytest.mark.slow
def test_planted_label_flips_rise_to_the_top(tmp_path, cluster_client):
    """5% of one finding's labels flipped: the top 5% of its ranking holds at least half of
    them, and the report, the CSV and the picture say so."""
    url = str(tmp_path / "noisy.zarr")
    make_feature_store(url, 2000, feature_dim=48, chunk_rows=250, seed=7, signal=2.5)
    store = FeatureStore.open(url, mode="r+")
    k = store.label_names.index(FINDING)
    labels = store.read("labels")
    rng = np.random.default_rng(1)
    flipped = np.sort(rng.choice(store.n_rows, store.n_rows // 20, replace=False))
    labels[flipped, k] = 1 - labels[flipped, k]
    store.array("labels")[:] = labels
    audit = audit_labels(url, tmp_path / "audit", folds=3,
                         config=TrainConfig(epochs=15, batch_size=64), client=cluster_client)
    ranking = audit.issues[audit.issues["finding"] == FINDING]
    top = ranking.head(len(ranking) // 20)
    found = np.isin(top["row"], flipped).sum()
    assert found >= len(flipped) / 2, (found, len(flipped))
    written = pd.read_csv(tmp_path / "audit" / "label_issues.csv")
    assert list(written.columns) == ["image", "row", "patient_id", "finding", "given",
                                     "probability", "score", "issue"]
    assert len(written) == len(audit.issues) and written["score"].is_monotonic_increasing
    report = (tmp_path / "audit" / "label_audit.md").read_text()
    assert "| Infiltration |" in report and "Out-of-fold probabilities from 3 heads" in report
    assert (tmp_path / "audit" / "suspects.png").stat().st_size > 5000
    summary = audit.per_finding.set_index("finding")
    assert summary.loc[FINDING, "issues"] >= len(flipped) / 2
