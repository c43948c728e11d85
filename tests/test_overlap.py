"""Overlap between archives: RSNA Pneumonia's images are NIH ChestX-ray14's, re-encoded as
JPEG-in-DICOM. An RSNA-layout archive is written here whose DICOM files hold some of a
synthetic NIH archive's images (re-encoded at JPEG quality 90 and rescaled, as RSNA's are)
beside images of its own; both are extracted as usual, and the overlap is found from the
stores alone, without flagging distinct images of one patient."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import zarr
from helpers import cxrdask
from PIL import Image

from cxrdask.archive.synthetic import make_archive
from cxrdask.archive.synthetic.layouts import encode_jpeg_dicom
from cxrdask.archive.synthetic.render import render_image
from cxrdask.evaluation.report import evaluate
from cxrdask.extract.run import extract_features
from cxrdask.head.train import TrainConfig, train_head
from cxrdask.store.features import FeatureStore
from cxrdask.store.overlap import OverlapUncheckable, find_overlap
from cxrdask.testing import StoreOrigin

pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.slow

SMALL = dict(weights="random", backbone="resnet18", image_size=64, progress=False, chunk_rows=16)
PLANTED = 16
SIGNED = StoreOrigin(signatures=True)  # synthetic stores whose rows have signatures


@pytest.fixture(scope="module")
def archives(tmp_path_factory, cluster_client):
    """A synthetic NIH archive and its store; an RSNA-layout archive of DICOMs: the first
    ``PLANTED`` of NIH's images re-encoded (JPEG quality 90, rescaled from 128 to 160 px),
    then images of its own."""
    root = tmp_path_factory.mktemp("overlap")
    nih = make_archive(str(root / "nih"), n=60, size=128, seed=11, threads=2)
    table = pd.read_csv(nih.metadata_url)
    rsna = root / "rsna"
    (rsna / "stage_2_train_images").mkdir(parents=True)
    planted, rows = {}, []
    for k in range(PLANTED + 12):
        if k < PLANTED:
            name = table["Image Index"].iloc[k]
            path = next((root / "nih").rglob(name))
            gray = np.asarray(Image.open(path).convert("L").resize((160, 160), Image.Resampling.BILINEAR))
        else:
            gray = render_image(np.zeros(14, np.uint8), size=160, seed=(99, 7, k))
        patient = f"rsna-{k:04d}"
        if k < PLANTED:
            planted[patient] = name
        (rsna / "stage_2_train_images" / f"{patient}.dcm").write_bytes(encode_jpeg_dicom(gray))
        rows.append({"patientId": patient, "x": "", "y": "", "width": "", "height": "",
                     "Target": k % 2})
    pd.DataFrame(rows).to_csv(rsna / "stage_2_train_labels.csv", index=False)
    stores = {"nih": str(root / "nih.zarr"), "rsna": str(root / "rsna.zarr")}
    extract_features(nih.metadata_url, nih.root, stores["nih"], client=cluster_client,
                     split="patient", **SMALL)
    extract_features(None, str(rsna), stores["rsna"], client=cluster_client, **SMALL)
    return {"stores": stores, "planted": planted, "root": root}


def test_re_encoded_images_are_found_and_nothing_else(archives):
    pairs = find_overlap(archives["stores"]["nih"], archives["stores"]["rsna"])
    found = dict(zip(pairs["b_image"], pairs["a_image"], strict=True))
    assert found == archives["planted"]  # every planted image, each with its original, no other
    assert pairs["correlation"].min() >= 0.995 and pairs["detail_correlation"].min() >= 0.9


def test_distinct_images_of_one_patient_are_not_called_one(archives):
    store = FeatureStore.open(archives["stores"]["nih"])
    patients = pd.Series(store.read("patient_id")).value_counts()
    assert (patients >= 2).sum() >= 5  # follow-ups: several images of one patient
    assert find_overlap(store).empty  # no repeats within the archive
    # The margin: how close distinct images of one patient come, against the threshold.
    from cxrdask.store.overlap import DEFAULT_THRESHOLD, standardised_signatures

    signed = standardised_signatures(store)
    ids = store.read("patient_id")[signed.rows]
    closest = max(float(signed.details[i] @ signed.details[j])
                  for i in range(len(ids)) for j in range(i + 1, len(ids)) if ids[i] == ids[j])
    assert closest < DEFAULT_THRESHOLD


def test_the_command_line_lists_the_pairs(archives, tmp_path):
    out = tmp_path / "pairs.csv"
    run = cxrdask("overlap", archives["stores"]["nih"], archives["stores"]["rsna"], "--out", out,
                  check=True)
    assert f"{PLANTED} image(s) of" in run.stdout and "that are images of" in run.stdout
    assert len(pd.read_csv(out)) == PLANTED


def test_an_external_score_leaves_out_the_images_the_head_trained_on(archives, tmp_path):
    stores = archives["stores"]
    head = train_head(stores["nih"], TrainConfig(epochs=2, batch_size=16), tmp_path / "head",
                      progress=False, plot=False).checkpoint
    report = evaluate(stores["rsna"], head, bootstrap=0, out_dir=tmp_path / "report")
    assert report.overlap is not None and report.overlap.checked
    assert len(report.overlap.rows) == PLANTED
    assert report.split == "all" and report.n_rows == 12  # the rest: RSNA's own images
    assert report.external.startswith("External validation")
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"Left out: {PLANTED} row(s) whose image is one the head trained on" in markdown


def test_without_thumbnails_the_score_is_not_called_external(archives, tmp_path):
    """A training store made before stores kept thumbnails: the overlap cannot be checked,
    and the report says so instead of calling the score external."""
    stores = archives["stores"]
    old = tmp_path / "old-nih.zarr"
    shutil.copytree(stores["nih"], old)
    group = zarr.open_group(str(old), mode="r+")
    del group["thumbnail"]
    del group["detail"]
    zarr.consolidate_metadata(str(old))
    assert not FeatureStore.open(str(old)).has_thumbnails
    with pytest.raises(OverlapUncheckable, match="keeps no thumbnails"):
        find_overlap(str(old), stores["rsna"])
    head = train_head(str(old), TrainConfig(epochs=1, batch_size=16), tmp_path / "head",
                      progress=False, plot=False).checkpoint
    report = evaluate(stores["rsna"], head, bootstrap=0)
    assert not report.overlap.checked and "keeps no thumbnails" in report.overlap.reason
    assert report.external.startswith("Another archive's score (not shown to be external")
    assert report.n_rows == PLANTED + 12  # nothing left out that was not found


def test_one_head_on_both_learns_each_image_once_and_scores_the_copies_apart(archives, tmp_path):
    """Trained on NIH then RSNA, a head learns each planted image once, through NIH's copy in
    NIH's split: RSNA's copies are left out of its training and validation rows, and out
    of its internal score (the head learnt them from NIH, in whatever split)."""
    from cxrdask.archive.splits import TEST, TRAIN, VALIDATION

    stores = archives["stores"]
    result = train_head([stores["nih"], stores["rsna"]], TrainConfig(epochs=1, batch_size=16),
                        tmp_path / "both", progress=False, plot=False)
    first, second = result.stores
    assert first["copies"]["rows_left_out"] == 0
    assert second["copies"]["rows_left_out"] == PLANTED and second["copies"]["checked"]
    assert f"{PLANTED} copies of earlier stores' images left out" in result.rows_used()
    rsna = FeatureStore.open(stores["rsna"])
    copies = np.zeros(rsna.n_rows, bool)
    copies[find_overlap(stores["nih"], stores["rsna"])["b_row"].to_numpy()] = True
    split = rsna.read("split")
    assert second["rows"]["train"] == int(((split == TRAIN) & ~copies).sum())
    assert second["rows"]["validation"] == int(((split == VALIDATION) & ~copies).sum())
    report = evaluate(stores["rsna"], result.checkpoint, split="all", bootstrap=0,
                      out_dir=tmp_path / "rsna")
    assert report.overlap.internal and len(report.overlap.rows) == PLANTED
    assert report.n_rows == rsna.n_rows - PLANTED and report.external is None
    assert "whose image is also in an earlier training store" in (
        tmp_path / "rsna" / "report.md").read_text()
    assert evaluate(stores["nih"], result.checkpoint, bootstrap=0).overlap is None  # the first
    if (split == TEST).any():
        test_only = evaluate(stores["rsna"], result.checkpoint, bootstrap=0)
        assert test_only.n_rows == int(((split == TEST) & ~copies).sum())
    reverse = train_head([stores["rsna"], stores["nih"]], TrainConfig(epochs=1, batch_size=16),
                         tmp_path / "reverse", progress=False, plot=False)
    assert reverse.stores[1]["copies"]["rows_left_out"] == PLANTED  # NIH's copies of RSNA's


def test_a_synthetic_archive_can_hold_copies_of_another(archives, tmp_path, cluster_client):
    """``copies_of``/``copies`` (``cxrdask synth --copies-of``): an RSNA-layout archive whose
    first images are the NIH archive's, re-encoded as JPEG in DICOM, each found."""
    from cxrdask.errors import OptionError

    root = archives["root"]
    rsna = make_archive(str(tmp_path / "rsna"), 24, size=160, layout="rsna-pneumonia", seed=8,
                        copies_of=str(root / "nih"), copies=10, threads=1)
    store = str(tmp_path / "rsna.zarr")
    extract_features(None, rsna.root, store, client=cluster_client, **SMALL)
    pairs = find_overlap(archives["stores"]["nih"], store)
    names = sorted(p.name for p in (root / "nih").rglob("*.png"))[:10]
    assert sorted(pairs["a_image"]) == names and pairs["b_row"].nunique() == 10
    with pytest.raises(OptionError, match="give both"):
        make_archive(str(tmp_path / "x"), 5, layout="rsna-pneumonia", copies=3)
    with pytest.raises(OptionError, match="fewer than the 500 to copy"):
        make_archive(str(tmp_path / "y"), 600, size=32, layout="rsna-pneumonia",
                     copies_of=str(root / "nih"), copies=500)


def test_a_report_counts_the_rows_left_out_of_its_own_split(archives, tmp_path):
    """Scored on its test split, a store says how many of that split's rows were left out,
    not how many copies the whole store holds."""
    from cxrdask.archive.splits import TEST

    stores = archives["stores"]
    head = train_head([stores["nih"], stores["rsna"]], TrainConfig(epochs=1, batch_size=16),
                      tmp_path / "both", progress=False, plot=False).checkpoint
    rsna = FeatureStore.open(stores["rsna"])
    copies = find_overlap(stores["nih"], stores["rsna"])["b_row"].to_numpy()
    in_test = int((rsna.read("split")[copies] == TEST).sum())
    report = evaluate(stores["rsna"], head, split="test", bootstrap=0)
    assert len(report.overlap.rows) == in_test < PLANTED
    assert report.overlap.to_json()["rows_left_out"] == in_test


def test_the_larger_store_is_streamed_whichever_side_it_is_given(tmp_path, monkeypatch):
    """Between two stores the smaller one is held and the larger read a block at a time:
    the pairs are the planted ones, the same either way round (sides swapped), and a
    block boundary (whole chunks: 4,000 rows here) does not drop any."""
    from cxrdask.testing import copy_signatures, make_feature_store

    big, small = str(tmp_path / "big.zarr"), str(tmp_path / "small.zarr")
    from cxrdask.store import overlap

    make_feature_store(big, 9000, feature_dim=4, chunk_rows=500, seed=1, origin=SIGNED)
    make_feature_store(small, 700, feature_dim=4, chunk_rows=100, seed=2, origin=SIGNED)
    planted = [0, 3999, 4000, 4499, 4500, 8999, 6123]
    copy_signatures(big, planted, small)
    held = []
    whole = overlap.standardised_signatures

    def recorded(store):
        held.append(store.n_rows)
        return whole(store)

    monkeypatch.setattr(overlap, "standardised_signatures", recorded)
    forward = find_overlap(big, small)
    assert sorted(zip(forward["a_row"], forward["b_row"], strict=True)) == sorted(
        (row, k) for k, row in enumerate(planted))
    backward = find_overlap(small, big)
    assert sorted(zip(backward["b_row"], backward["a_row"], strict=True)) == sorted(
        zip(forward["a_row"], forward["b_row"], strict=True))
    assert (forward["detail_correlation"] > 0.999).all()
    assert held == [700, 700]  # only the smaller store is ever held whole


def test_stores_too_large_to_compare_row_by_row_are_screened_by_a_sample(tmp_path, monkeypatch):
    """Above EXACT_PAIRS a sample of the later store is searched first: stores that share no
    image are judged so without the whole search (and say so); stores that share images
    (RSNA's are NIH's) still have every copy found, the same as the exact search."""
    from cxrdask.store import copies as overlap
    from cxrdask.testing import copy_signatures, make_feature_store

    nih, rsna, other = (str(tmp_path / f"{name}.zarr") for name in ("nih", "rsna", "other"))
    make_feature_store(nih, 3000, feature_dim=4, chunk_rows=500, seed=1, origin=SIGNED)
    make_feature_store(rsna, 1000, feature_dim=4, chunk_rows=250, seed=2, origin=SIGNED)
    make_feature_store(other, 1000, feature_dim=4, chunk_rows=250, seed=3, origin=SIGNED)
    planted = np.random.default_rng(4).choice(3000, 600, replace=False)
    copy_signatures(nih, planted, rsna)
    exact = overlap.copies_in(rsna, [nih, other])
    monkeypatch.setattr(overlap, "EXACT_PAIRS", 10_000)
    monkeypatch.setattr(overlap, "SCREEN_ROWS", 100)
    screened = overlap.copies_in(rsna, [nih, other])
    assert screened.screened == (FeatureStore.open(other).url,)
    assert np.array_equal(screened.rows, np.arange(600)) and np.array_equal(exact.rows, screened.rows)
    record = {"checked": True, **screened.to_json()}
    assert "600 copies" in overlap.copies_phrase(record)
    assert "none of 100 random rows was a copy" in overlap.copies_phrase(record)


def test_copies_found_once_are_kept_until_either_store_changes(tmp_path, monkeypatch):
    """A second head or report on the same stores reads the copies from the cache folder
    (no search: it would raise here); a store written again is searched again."""
    from cxrdask.store import copies as overlap
    from cxrdask.testing import copy_signatures, make_feature_store

    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path / "cache"))
    nih, rsna = str(tmp_path / "nih.zarr"), str(tmp_path / "rsna.zarr")
    make_feature_store(nih, 600, feature_dim=4, chunk_rows=100, seed=1, origin=SIGNED)
    make_feature_store(rsna, 300, feature_dim=4, chunk_rows=100, seed=2, origin=SIGNED)
    copy_signatures(nih, [5, 50, 500], rsna)
    first = overlap.copies_in(rsna, [nih])
    assert np.array_equal(first.rows, [0, 1, 2])
    assert len(list((tmp_path / "cache" / "copies").glob("*.npz"))) == 1

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(overlap, "find_overlap", no_search)
    assert np.array_equal(overlap.copies_in(rsna, [nih]).rows, first.rows)
    FeatureStore.open(rsna, mode="r+").update_provenance(note="written again")
    with pytest.raises(AssertionError, match="searched again"):
        overlap.copies_in(rsna, [nih])
