"""Archives other than NIH's, end to end: found from their files, extracted, trained on with
missing labels masked, and an NIH head scored on another archive (external validation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import cxrdask

from cxrdask.archive.findings import MISSING
from cxrdask.archive.synthetic import make_archive
from cxrdask.archive.views import view_mask
from cxrdask.evaluation.report import evaluate
from cxrdask.extract.run import extract_features
from cxrdask.head.loss import MaskedBCEWithLogits, loss_for
from cxrdask.head.train import train_head
from cxrdask.store.features import STATUS_FAILED, STATUS_OK, FeatureStore

SMALL = dict(weights="random", backbone="resnet18", image_size=64, progress=False)


@pytest.fixture(scope="module")
def chexpert_store(tmp_path_factory):
    """A CheXpert-layout archive extracted by the command line with no --metadata or
    --archive flag: the kind is found from the folder's own files."""
    out = tmp_path_factory.mktemp("chexpert")
    archive = make_archive(str(out / "CheXpert-v1.0-small"), 240, size=64, layout="chexpert",
                           seed=5, strength=2.0, threads=2)
    store = str(out / "chexpert.zarr")
    run = cxrdask("extract", "--images", archive.root,
                  "--store", store, "--weights", "random", "--backbone", "resnet18",
                  "--image-size", "64", "--workers", "1", "--quiet", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "chexpert archive, 240 images" in run.stdout
    return store


def test_the_store_keeps_the_archives_findings_and_its_missing_labels(chexpert_store):
    store = FeatureStore.open(chexpert_store)
    assert store.provenance["archive"]["kind"] == "chexpert"
    assert len(store.label_names) == 13 and "Effusion" in store.label_names
    labels = store.read("labels")
    assert (labels == MISSING).any() and set(np.unique(labels)) <= {0, 1, MISSING}
    assert store.provenance["split"]["method"] == "official"  # valid.csv is the test split
    table = store.table()
    assert table["Effusion"].isna().any()  # missing, not negative


def test_the_loss_counts_known_labels_only():
    torch.manual_seed(0)
    logits, targets = torch.randn(32, 5), (torch.rand(32, 5) > 0.7).float()
    weight = torch.rand(5) + 0.5
    plain = torch.nn.BCEWithLogitsLoss(pos_weight=weight)(logits, targets)
    torch.testing.assert_close(MaskedBCEWithLogits(weight)(logits, targets), plain)
    gaps = targets.clone()
    gaps[torch.rand(32, 5) > 0.6] = float("nan")
    known = ~torch.isnan(gaps)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weight, reduction="none")(
        logits, torch.nan_to_num(gaps))[known].mean()
    torch.testing.assert_close(MaskedBCEWithLogits(weight)(logits, gaps), expected)


def test_an_nih_head_scores_on_a_chexpert_store_as_an_external_validation(
        chexpert_store, small_archive, cluster_client, tmp_path):
    nih_store = str(tmp_path / "nih.zarr")
    extract_features(small_archive.metadata_url, small_archive.root, nih_store,
                     client=cluster_client, split="patient", chunk_rows=40, **SMALL)
    head = train_head(nih_store, out_dir=tmp_path / "nih-head", epochs=2, batch_size=16,
                      progress=False).checkpoint
    own = train_head(chexpert_store, out_dir=tmp_path / "chexpert-head", epochs=2,
                     batch_size=16, progress=False, plot=False)
    assert np.isfinite(own.best_val_loss)
    assert isinstance(loss_for(FeatureStore.open(chexpert_store), None), MaskedBCEWithLogits)
    assert isinstance(loss_for(FeatureStore.open(nih_store), None), torch.nn.BCEWithLogitsLoss)

    report = evaluate(chexpert_store, head, bootstrap=20, out_dir=tmp_path / "report")
    store = FeatureStore.open(chexpert_store)
    # External: every readable row is unseen, so every one is scored (of the frontal views,
    # the default: CheXpert's laterals are left out and counted), and the report says so.
    scored = store.rows("all")[view_mask(store.read("view")[store.rows("all")], "frontal")]
    assert report.split == "all" and report.n_rows == len(scored) > len(store.rows("test"))
    assert report.views["left_out"]["lateral"] == len(store.rows("all")) - len(scored) > 0
    assert report.external is not None and "every labelled row of the store (split all)" in report.external
    # A finding the archive does not label gets no number anywhere, and is listed once.
    unlabelled = {"Infiltration", "Mass", "Nodule", "Emphysema", "Hernia", "Fibrosis"}
    assert unlabelled <= set(report.not_labelled)
    assert not unlabelled & set(report.table["label"]) and len(report.table) == 14 - len(report.not_labelled)
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    numbered = {row["label"] for key in ("per_label", "auc_intervals", "calibration", "subgroups")
                for row in saved[key]}
    assert not unlabelled & numbered and set(saved["not_labelled"]) == set(report.not_labelled)
    shared = report.table.set_index("label").loc["Effusion"]
    effusion = store.read("labels")[scored, store.label_names.index("Effusion")]
    assert shared["positives"] == int((effusion == 1).sum())  # scored on labelled rows only
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert markdown.count("Hernia") == 1 and "Not labelled in this archive" in markdown
    test_only = evaluate(chexpert_store, head, split="test", bootstrap=0, views="all")
    assert test_only.split == "test" and test_only.n_rows == len(store.rows("test"))


def test_a_dicom_archive_extracts_every_decodable_file_and_names_the_broken_one(
        tmp_path, cluster_client):
    archive = make_archive(str(tmp_path / "vindr"), 40, size=64, layout="vindr-cxr", seed=2,
                           threads=2)
    files = sorted((tmp_path / "vindr" / "train").glob("*.dicom"))
    broken = files[3]
    broken.write_bytes(broken.read_bytes()[:1500])  # a truncated download
    store = str(tmp_path / "vindr.zarr")
    extract_features(None, archive.root, store, client=cluster_client, chunk_rows=8, **SMALL)
    opened = FeatureStore.open(store)
    status, errors = opened.read("status"), opened.read("error")
    index = list(opened.read("image")).index(broken.stem)
    assert status[index] == STATUS_FAILED and "DICOM" in errors[index]
    assert (np.delete(status, index) == STATUS_OK).all()
    notes = " ".join(note for _, note in opened.provenance["conversions"])
    assert "MONOCHROME1 inverted" in notes and "RLE Lossless" in notes
