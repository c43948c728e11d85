"""A study across archives: one head on several stores (the union of their findings, each
store's own split), views chosen the same way in every archive, and what a checkpoint and a
run say of the rows they used."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import cxrdask

from cxrdask.archive.views import check_views, view_counts, view_families, view_mask
from cxrdask.config import TrainConfig
from cxrdask.errors import CxrDaskError, OptionError, StoreMismatchError
from cxrdask.evaluation.report import evaluate
from cxrdask.head.batches import FeatureBatches
from cxrdask.head.model import load_checkpoint
from cxrdask.head.train import train_head
from cxrdask.head.union import MultiStoreBatches, label_columns, union_findings
from cxrdask.store.features import FeatureSettings, FeatureStore
from cxrdask.testing import make_feature_store

FAST = TrainConfig(epochs=2, batch_size=64, resident_mb=0)


def relabelled_store(url: str, source: str, findings: dict[str, str | None], views=None,
                     offset: float = 0.0) -> str:
    """A copy of ``source``'s rows and features under another archive's findings: ``findings``
    maps each new finding to the source's finding whose labels it takes (None: the archive
    does not label it, missing on every row), as a second archive of the same images would;
    ``views`` replaces the view of each row, and ``offset`` is added to every feature (a
    scanner's shift)."""
    from cxrdask.imaging.preprocessing import Preprocessing

    original = FeatureStore.open(source)
    table = original.table(["image_index", "patient_id", "follow_up", "age", "sex", "view", "split",
                            "labels"])
    frame = table.rename(columns={"view": "view_position"})
    for name, taken in findings.items():
        frame[name] = np.nan if taken is None else table[taken].astype(float)
    frame = frame.drop(columns=[c for c in original.label_names if c not in findings])
    frame.attrs["findings"] = list(findings)
    if views is not None:
        frame["view_position"] = views
    settings = FeatureSettings(backbone=original.provenance["backbone"],
                               preprocessing=original.provenance.get("preprocessing")
                               or Preprocessing().to_dict(),
                               dtype=original.provenance["dtype"],
                               split=original.provenance["split"])
    store = FeatureStore.create(url, frame, settings, chunk_rows=original.chunk_rows,
                                extra={"archive": {"root": None, "synthetic": True,
                                                   "kind": "chexpert"}})
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        store.write_chunk(chunk, original.read("features", slice(start, stop)) + offset,
                          original.read("status")[start:stop], [""] * (stop - start))
    store.update_provenance(complete=True, failed_rows=0)
    return url


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An NIH-like store and a CheXpert-like one of other images: other findings (some
    shared under CheXpert's names), one in seven rows lateral."""
    root = tmp_path_factory.mktemp("across")
    nih = str(root / "nih.zarr")
    make_feature_store(nih, 1200, feature_dim=32, chunk_rows=100, seed=5, signal=1.5)
    other = str(root / "other.zarr")
    make_feature_store(other, 900, feature_dim=32, chunk_rows=100, seed=5, signal=1.5)
    rng = np.random.default_rng(1)
    views = np.where(rng.random(900) < 1 / 7, "LATERAL", "AP")
    chexpert = relabelled_store(str(root / "chexpert.zarr"), other, {
        "Pleural Effusion": "Effusion", "Cardiomegaly": "Cardiomegaly", "Edema": "Edema",
        "Lung Opacity": "Infiltration", "Fracture": None}, views)
    return {"nih": nih, "chexpert": chexpert}


def test_the_union_of_findings_is_harmonised_and_each_store_maps_into_it(stores):
    nih, chexpert = FeatureStore.open(stores["nih"]), FeatureStore.open(stores["chexpert"])
    findings = union_findings([nih, chexpert])
    assert findings[:14] == list(nih.label_names)  # NIH's first, in its order
    assert findings[14:] == ["Lung Opacity", "Fracture"]  # CheXpert's own, once each
    columns = label_columns(chexpert, findings)
    assert columns[findings.index("Effusion")] == chexpert.label_names.index("Pleural Effusion")
    assert columns[findings.index("Mass")] == -1
    batches = FeatureBatches(chexpert, "train", 64, shuffle=False, label_columns=columns)
    _, targets = next(iter(batches))
    assert targets.shape[1] == len(findings)
    assert torch.isnan(targets[:, findings.index("Mass")]).all()  # not labelled there
    assert not torch.isnan(targets[:, findings.index("Effusion")]).all()


def test_one_head_trains_on_two_stores_and_records_both(stores, tmp_path):
    result = train_head([stores["nih"], stores["chexpert"]], FAST, tmp_path / "head",
                        progress=False, plot=False)
    ckpt = load_checkpoint(result.checkpoint)
    assert list(ckpt.label_names) == union_findings(
        [FeatureStore.open(stores["nih"]), FeatureStore.open(stores["chexpert"])])
    recorded = ckpt.provenance["stores"]
    assert [r["url"] for r in recorded] == [stores["nih"], stores["chexpert"]]
    assert [r["archive"] for r in recorded] == ["nih", "chexpert"]
    chexpert = FeatureStore.open(stores["chexpert"])
    view = chexpert.read("view")
    in_train = (chexpert.read("split") == 0) & (view != "LATERAL")
    assert recorded[1]["rows"]["train"] == int(in_train.sum())  # frontal rows only, by default
    assert recorded[1]["views_left_out"]["lateral"] > 0 and recorded[0]["views_left_out"]["lateral"] == 0
    assert recorded[0]["rows"]["train"] == len(FeatureBatches(stores["nih"], "train").plan.keep.nonzero()[0])
    assert "chexpert.zarr (chexpert)" in result.rows_used() and "lateral" in result.rows_used()
    # The head scores each store on its own findings; CheXpert's Fracture (never labelled)
    # and NIH's findings that CheXpert does not give get no number there.
    report = evaluate(stores["chexpert"], result.checkpoint, bootstrap=0)
    assert report.split == "test" and report.external is None  # a store it trained on
    assert set(report.table["label"]) == {"Effusion", "Cardiomegaly", "Edema", "Lung Opacity"}
    assert "Mass" in report.not_labelled and "Fracture" in report.not_labelled
    assert report.views["left_out"]["lateral"] > 0
    nih_report = evaluate(stores["nih"], result.checkpoint, bootstrap=0)
    assert len(nih_report.table) == 14 and nih_report.mean_auc > 0.8


def test_several_stores_read_as_one_in_proportion_or_balanced(stores):
    nih, chexpert = FeatureStore.open(stores["nih"]), FeatureStore.open(stores["chexpert"])
    findings = union_findings([nih, chexpert])
    parts = [FeatureBatches(s, "train", 32, shuffle=True, seed=3, label_columns=label_columns(s, findings))
             for s in (nih, chexpert)]
    rows = MultiStoreBatches(parts, shuffle=True, seed=3)
    seen = sum(len(x) for x, _ in rows)
    assert seen == rows.n_rows == parts[0].n_rows + parts[1].n_rows  # every row once an epoch
    balanced = MultiStoreBatches(parts, shuffle=True, balance="archive", seed=3)
    shares = balanced.batches_per_store()
    assert shares[0] == shares[1] and len(balanced) == sum(shares)
    from_chexpert = 0
    for _, y in balanced:  # CheXpert's rows are those with Lung Opacity labelled
        from_chexpert += int((~torch.isnan(y[:, findings.index("Lung Opacity")])).any().item())
    assert from_chexpert == shares[1]
    with pytest.raises(OptionError, match="balance must be one of"):
        MultiStoreBatches(parts, shuffle=True, balance="evenly")  # type: ignore[arg-type]


def test_stores_of_other_features_are_refused_before_any_pass(stores, tmp_path):
    other = str(tmp_path / "wide.zarr")
    make_feature_store(other, 300, feature_dim=48, chunk_rows=100, seed=7)
    with pytest.raises(StoreMismatchError, match="feature_dim"):
        train_head([stores["nih"], other], FAST, tmp_path / "head", progress=False)
    assert not (tmp_path / "head" / "head.pt").exists()
    with pytest.raises(OptionError, match="given twice"):
        train_head([stores["nih"], stores["nih"]], FAST, tmp_path / "twice", progress=False)


def test_the_command_line_trains_on_every_store_given(stores, tmp_path):
    """``--store A --store B`` once trained on B alone, silently."""
    run = cxrdask("train", "--store", stores["nih"], "--store", stores["chexpert"], "--out",
                  tmp_path / "head", "--epochs", 1, "--batch-size", 64, "--quiet", check=True)
    assert "nih.zarr (nih)" in run.stdout and "chexpert.zarr (chexpert)" in run.stdout
    info = cxrdask("info", tmp_path / "head" / "head.pt", check=True).stdout
    assert info.count("features from:") == 2 and "left out: lateral" in info
    assert len(load_checkpoint(str(tmp_path / "head" / "head.pt")).label_names) == 16


def test_views_one_vocabulary_across_archives():
    spelled = np.array(["PA", "AP", "AP Supine", "AP_horizontal", "LATERAL", "LL", "L", "RL",
                        "", "COSTAL", "AP AXIAL", "PA LLD"])
    assert list(view_families(spelled)) == ["frontal", "frontal", "frontal", "frontal", "lateral",
                                            "lateral", "lateral", "lateral", "unknown", "other",
                                            "frontal", "frontal"]
    assert view_mask(spelled, "frontal").sum() == 7  # the six frontal and the one unrecorded
    assert view_mask(spelled, "all").all()
    assert list(np.flatnonzero(view_mask(spelled, ["PA"]))) == [0]
    assert view_mask(spelled, ["lateral", "other"]).sum() == 5
    assert view_counts(spelled) == {"frontal": 6, "lateral": 4, "other": 1, "unknown": 1}
    with pytest.raises(OptionError, match="views must be 'frontal', 'all' or a list"):
        check_views("sideways")
    with pytest.raises(OptionError, match="name at least one view"):
        TrainConfig(views=())


def test_views_all_trains_on_laterals_too_and_none_left_is_refused(stores, tmp_path):
    every = train_head(stores["chexpert"], TrainConfig(epochs=1, batch_size=64, views="all"),
                       tmp_path / "all", progress=False, plot=False)
    chexpert = FeatureStore.open(stores["chexpert"])
    assert every.stores[0]["rows"]["train"] == int((chexpert.read("split") == 0).sum())
    with pytest.raises(CxrDaskError, match="no readable validation rows to select a checkpoint of views"):
        train_head(stores["nih"], TrainConfig(epochs=1, views=("lateral",)), tmp_path / "none",
                   progress=False, plot=False)


def test_a_single_store_trains_as_before(stores, tmp_path):
    """One store, every row frontal: the same rows, the same targets, the same loss as the
    reader without views (nothing already working changes)."""
    one = train_head(stores["nih"], FAST, tmp_path / "a", progress=False, plot=False)
    plain = FeatureBatches(stores["nih"], "train", 64, shuffle=True, seed=0)
    framed = FeatureBatches(stores["nih"], "train", 64, shuffle=True, seed=0, views="frontal")
    assert np.array_equal(plain.plan.keep, framed.plan.keep)
    for (x1, y1), (x2, y2) in zip(plain, framed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    again = train_head(stores["nih"], FAST, tmp_path / "b", progress=False, plot=False)
    pd.testing.assert_series_equal(one.history["val_loss"], again.history["val_loss"])


@pytest.mark.slow
def test_the_study_table_scores_each_archive_inside_and_outside_its_training(
        stores, cluster_client, tmp_path):
    """One head on both stores scored on each one's test split; each archive left out in
    turn and scored whole by a head that never saw it; means over the findings both have."""
    from cxrdask.config import EvaluateConfig
    from cxrdask.study.table import run_study

    result = run_study([stores["nih"], stores["chexpert"]], tmp_path / "study", FAST,
                       EvaluateConfig(bootstrap=50), client=cluster_client)
    assert set(result.heads) == {"all", "without-nih", "without-chexpert"}
    assert len(load_checkpoint(result.heads["all"]).label_names) == 16
    assert list(load_checkpoint(result.heads["without-nih"]).label_names) == list(
        FeatureStore.open(stores["chexpert"]).label_names)
    summary = result.summary.set_index("archive")
    assert list(summary.index) == ["nih", "chexpert"]
    assert (summary["findings"] == 3).all()  # Effusion, Cardiomegaly, Edema: labelled by both
    chexpert = FeatureStore.open(stores["chexpert"])
    frontal = view_mask(chexpert.read("view"), "frontal")
    assert summary.loc["chexpert", "external_rows"] == int(frontal.sum())  # every frontal row
    test_rows = (chexpert.read("split") == 2) & frontal
    assert summary.loc["chexpert", "internal_rows"] == int(test_rows.sum())
    rows = result.table.set_index(["archive", "finding"])
    opacity = rows.loc[("chexpert", "Lung Opacity")]
    assert np.isfinite(opacity["internal_auc"]) and np.isnan(opacity["external_auc"])
    assert ("chexpert", "Fracture") not in rows.index  # never labelled: no number anywhere
    effusion = rows.loc[("nih", "Effusion")]
    assert effusion["internal_low"] <= effusion["internal_auc"] <= effusion["internal_high"]
    markdown = (tmp_path / "study" / "study.md").read_text()
    assert "| nih | " in markdown and "| chexpert | Lung Opacity |" in markdown and "n/a" in markdown
    assert (tmp_path / "study" / "study.png").stat().st_size > 5000
    saved = (tmp_path / "study" / "study.json").read_text()
    assert '"archive": "chexpert"' in saved
    shift = result.shifts[("nih", "chexpert")]  # the pair's shift, beside the table
    assert 0.0 <= shift.separability.low <= shift.separability.estimate <= shift.separability.high
    assert f"| nih and chexpert | {shift.rows[0]:,} and {shift.rows[1]:,} | {shift.separability} |" \
        in markdown
    assert json.loads(saved)["shift"][0]["archives"] == ["nih", "chexpert"]
    assert (tmp_path / "study" / "shift" / "nih-chexpert" / "shift.png").stat().st_size > 5000
    with pytest.raises(OptionError, match="two stores or more"):
        run_study([stores["nih"]], tmp_path / "one", FAST, client=cluster_client)


def test_shift_tells_apart_archives_whose_features_differ(stores, tmp_path):
    """A domain classifier, cross-validated by patient: two stores drawn alike are hard to
    tell apart, a store whose features moved is told apart at once; prevalences and
    demographics beside it."""
    from cxrdask.study.shift import measure_shift

    alike = measure_shift(stores["nih"], stores["chexpert"], resamples=100)
    moved_url = relabelled_store(str(tmp_path / "moved.zarr"), stores["chexpert"],
                                 {"Effusion": "Pleural Effusion", "Edema": "Edema"}, offset=2.0)
    moved = measure_shift(stores["nih"], moved_url, tmp_path / "shift", resamples=100)
    assert alike.separability.estimate < 0.7 < 0.95 < moved.separability.estimate
    assert moved.separability.low <= moved.separability.estimate <= moved.separability.high
    assert set(alike.prevalence["finding"]) == {"Effusion", "Cardiomegaly", "Edema"}
    chexpert = FeatureStore.open(stores["chexpert"])
    lateral = (chexpert.read("view") == "LATERAL").mean()
    shares = alike.demographics.set_index("measure")
    assert shares.loc["view lateral", "b"] == f"{lateral:.1%}" and shares.loc["view lateral", "a"] == "0.0%"
    assert {"shift.md", "shift.json", "shift.png"} <= {p.name for p in (tmp_path / "shift").iterdir()}
    run = cxrdask("shift", stores["nih"], moved_url, "--bootstrap", 50, "--sample", 500, check=True)
    assert "Domain classifier" in run.stdout and "AUC" in run.stdout
