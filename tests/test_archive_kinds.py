"""Archive kinds: detection, one table per archive, and labels equal to torchxrayvision's.

torchxrayvision's dataset classes are the field's reference for how each archive's CSV
becomes labels (``-1`` and blank as NaN, ``No Finding`` zeroing, PadChest's term matching,
VinDr's union over readers). Each test writes a synthetic archive in the published layout,
reads it with cxrdask and with torchxrayvision, and compares every label of every row.
"""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pandas as pd
import pytest

from cxrdask.archive.findings import findings_of, harmonise
from cxrdask.archive.images import locate_archive_images
from cxrdask.archive.kinds import detect_archive, read_archive
from cxrdask.archive.synthetic import make_archive
from cxrdask.errors import ArchiveNotRecognisedError, MetadataError, OptionError

xrv = pytest.importorskip("torchxrayvision")


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    made = {}
    for layout in ("chexpert", "mimic-cxr-jpg", "padchest", "vindr-cxr", "rsna-pneumonia"):
        made[layout] = make_archive(str(root / layout), 400, size=32, layout=layout, seed=3,
                                    threads=2).root
    return made


def _quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def assert_same_labels(ours: pd.DataFrame, key: pd.Series, dataset, on: str) -> None:
    """Every finding torchxrayvision has, for every row it has: the same 1, 0 or NaN."""
    theirs = pd.DataFrame(dataset.labels, columns=dataset.pathologies)
    theirs[on] = dataset.csv[on].to_numpy() if on in dataset.csv else dataset.csv.index.to_numpy()
    ours = ours.assign(**{on: key.to_numpy()}).set_index(on).loc[theirs[on]]
    names = {name.lower(): name for name in findings_of(ours)}
    assert len(theirs) > 100
    for pathology in dataset.pathologies:
        mine = names.get(harmonise(pathology).lower()) or names[pathology.lower()]
        expected = theirs[pathology].to_numpy(dtype=np.float32)
        got = ours[mine].to_numpy(dtype=np.float32)
        np.testing.assert_array_equal(got, expected, err_msg=pathology)
        assert (expected == 1).sum() == (got == 1).sum()  # the counts, said plainly


def test_chexpert_labels_equal_torchxrayvisions(archives):
    root = archives["chexpert"]
    table = read_archive(root)
    assert table.attrs["archive"] == "chexpert" and len(findings_of(table)) == 13
    assert np.isnan(table[findings_of(table)].to_numpy()).any()  # blanks and -1 stay missing
    train = table[table["official_split"] == "trainval"]
    dataset = _quiet(lambda: xrv.datasets.CheX_Dataset(root, f"{root}/train.csv", views=["*"],
                                                       unique_patients=False))
    key = "CheXpert-v1.0-small/" + train["path"]
    assert_same_labels(train, key, dataset, "Path")


def test_chexpert_uncertain_policy_and_no_finding(archives):
    root = archives["chexpert"]
    raw = pd.read_csv(f"{root}/train.csv")
    missing, positive = (read_archive(root, uncertain=p) for p in ("missing", "positive"))
    uncertain = raw["Pleural Effusion"].eq(-1) & raw["No Finding"].ne(1)
    rows = np.flatnonzero(uncertain.to_numpy())
    assert len(rows) and np.isnan(missing["Effusion"].to_numpy()[rows]).all()
    assert (positive["Effusion"].to_numpy()[rows] == 1).all()
    healthy = np.flatnonzero(raw["No Finding"].eq(1).to_numpy())
    assert (missing["Effusion"].to_numpy()[healthy] == 0).all()  # No Finding zeroes findings
    with pytest.raises(OptionError, match="uncertain must be one of"):
        read_archive(root, uncertain="maybe")


def test_mimic_labels_equal_torchxrayvisions(archives):
    root = archives["mimic-cxr-jpg"]
    table = read_archive(root)
    dataset = _quiet(lambda: xrv.datasets.MIMIC_Dataset(
        root, f"{root}/mimic-cxr-2.0.0-chexpert.csv.gz", f"{root}/mimic-cxr-2.0.0-metadata.csv.gz",
        views=["*"], unique_patients=False))
    assert_same_labels(table, table["image_index"], dataset, "dicom_id")
    assert set(table["official_split"]) == {"train", "validation", "test"}
    assert table["path"].str.match(r"files/p1\d/p1\d{7}/s5\d{7}/[\w-]+\.jpg").all()


def test_padchest_labels_equal_torchxrayvisions(archives):
    root = archives["padchest"]
    table = read_archive(root)
    csv = f"{root}/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    dataset = _quiet(lambda: xrv.datasets.PC_Dataset(root, csv, views=["*"], unique_patients=False))
    assert_same_labels(table, table["image_index"], dataset, "ImageID")
    assert table["Effusion"].isna().sum() == pd.read_csv(csv)["Labels"].isna().sum() > 0


def test_vindr_labels_equal_torchxrayvisions_on_the_kaggle_file(archives, tmp_path):
    """Kaggle's one-row-per-box train.csv, written from the PhysioNet file's readers: both
    layouts give the same labels, and the Kaggle one equals torchxrayvision's."""
    root = archives["vindr-cxr"]
    readers = pd.read_csv(f"{root}/annotations/image_labels_train.csv")
    rows = []
    for _, reader in readers.iterrows():
        named = [c for c in readers.columns[2:] if reader[c] == 1] or ["No finding"]
        rows += [{"image_id": reader["image_id"], "class_name": c, "class_id": 0,
                  "rad_id": reader["rad_id"]} for c in named]
    kaggle = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(kaggle, index=False)
    physionet = read_archive(root)
    from_kaggle = read_archive(root, metadata=str(kaggle))
    assert physionet.attrs["archive"] == from_kaggle.attrs["archive"] == "vindr-cxr"
    dataset = _quiet(lambda: xrv.datasets.VinDr_Dataset(root, str(kaggle)))
    assert_same_labels(from_kaggle, from_kaggle["image_index"], dataset, "image_id")
    for name in findings_of(from_kaggle):
        aligned = physionet.set_index("image_index").loc[from_kaggle["image_index"], name]
        np.testing.assert_array_equal(aligned.to_numpy(), from_kaggle[name].to_numpy())


def test_rsna_labels_equal_torchxrayvisions(archives, tmp_path):
    root = archives["rsna-pneumonia"]
    table = read_archive(root)
    headers = tmp_path / "headers.csv.gz"
    with gzip.open(headers, "wt") as handle:
        pd.DataFrame({"PatientID": table["image_index"], "ViewPosition": "PA"}).to_csv(
            handle, index=False)
    dataset = _quiet(lambda: xrv.datasets.RSNA_Pneumonia_Dataset(
        root, f"{root}/stage_2_train_labels.csv", str(headers), views=["*"]))
    assert_same_labels(table, table["image_index"], dataset, "patientId")


def test_every_layout_is_detected_and_its_images_found(archives):
    for layout, root in archives.items():
        found = detect_archive(root)
        assert found.kind == layout
        table = read_archive(root)
        located = locate_archive_images(table, root)
        assert located.missing == [] and len(located.urls) == len(table) == 400


def test_a_folder_of_nothing_known_names_what_was_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ArchiveNotRecognisedError, match=r"Data_Entry_2017.csv.*train.csv.*"
                       r"mimic-cxr-2.0.0-metadata.*PADCHEST.*stage_2_train_labels.*manifest.csv"):
        detect_archive(str(tmp_path))


def test_a_forced_kind_that_is_not_there_is_refused(archives):
    with pytest.raises(ArchiveNotRecognisedError, match="looks like a padchest archive"):
        read_archive(archives["padchest"], "chexpert")


def test_a_manifest_reads_any_private_archive(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "manifest.csv").write_text(
        "path,patient_id,sex,age,Pleural Effusion,Cardiomegaly,Device\n"
        "scans/a.dcm,7,F,61,1,0,\n"
        "scans/b.dcm,7,F,62,-1,1,1\n"
        "scans/c.dcm,9,M,,0,,0\n")
    table = read_archive(str(tmp_path), uncertain="missing")
    assert table.attrs["archive"] == "dicom"
    assert findings_of(table) == ["Effusion", "Cardiomegaly", "Device"]
    np.testing.assert_array_equal(table["Effusion"], [1, np.nan, 0])
    assert list(table["patient_id"]) == [7, 7, 9] and list(table["age"]) == [61, 62, -1]
    (tmp_path / "manifest.csv").write_text("path,Effusion\nscans/a.png,2\n")
    with pytest.raises(MetadataError, match=r"line 2, column 'Effusion': '2' is not a label"):
        read_archive(str(tmp_path))


def test_the_command_lines_choices_are_the_librarys():
    """Every list of choices is defined once (cxrdask.choices); the library's checks and the
    command line's options both read it, so a kind the reader learns is one --help offers."""
    from cxrdask.archive.findings import UNCERTAIN_POLICIES
    from cxrdask.archive.kinds import ARCHIVE_KINDS
    from cxrdask.archive.synthetic.layouts import LAYOUTS
    from cxrdask.cli import build_parser

    def choices(command: str, dest: str) -> tuple:
        parser = build_parser(only=command)
        sub = parser._subparsers._group_actions[0].choices[command]  # argparse keeps them here
        return tuple(next(a for a in sub._actions if a.dest == dest).choices)

    assert choices("synth", "layout") == LAYOUTS
    assert choices("extract", "archive") == ("auto", *ARCHIVE_KINDS)
    assert choices("cache", "uncertain") == UNCERTAIN_POLICIES
    # every synthetic layout imitates a kind the reader knows (a PACS export is a dicom one)
    assert set(ARCHIVE_KINDS) >= set(LAYOUTS) - {"dicom-export"} and len(ARCHIVE_KINDS) == 8
    assert "dicom" in ARCHIVE_KINDS


def test_a_dicom_archive_without_pydicom_is_refused_before_any_work(tmp_path, monkeypatch):
    import sys

    from cxrdask.errors import MissingExtraError
    from cxrdask.extract.plan import plan_extraction

    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "manifest.csv").write_text("path,Effusion\nscans/a.dcm,1\nscans/b.dcm,0\n")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'cxrdask\[dicom\]'"):
        plan_extraction(None, str(archive), str(tmp_path / "s.zarr"), weights="random")
    assert not (tmp_path / "s.zarr").exists()


def test_chexpert_pointed_at_the_folder_that_holds_it_finds_every_image(tmp_path):
    """CheXpert's train.csv paths begin with ``CheXpert-v1.0-small/`` (the folder the download
    unpacks to): pointed at the folder above it, or at it, every image is found."""
    from cxrdask.extract.plan import plan_extraction

    parent = tmp_path / "downloads"
    archive = make_archive(str(parent / "CheXpert-v1.0-small"), 60, size=32, layout="chexpert",
                           seed=4, threads=2)
    listed = pd.read_csv(f"{archive.root}/train.csv")["Path"]
    assert listed.str.startswith("CheXpert-v1.0-small/train/patient").all()  # as published
    for root in (str(parent), archive.root):
        plan = plan_extraction(None, root, str(tmp_path / "f.zarr"), weights="random")
        assert plan.missing == [] and len(plan.urls) == len(plan.rows) == 60, root
        assert all(url.endswith(path) for url, path in
                   zip(map(plan.urls.get, plan.rows["image_index"]), plan.rows["path"], strict=True))


def test_mimic_pointed_above_its_folder_finds_every_image(archives, tmp_path):
    """MIMIC-CXR-JPG's ``files/p10/p100.../s5.../ID.jpg`` tree read from a folder above the one
    holding its CSVs (its labels given by hand): each image by its own path, not by a guess."""
    root = archives["mimic-cxr-jpg"]
    table = read_archive(root)
    from pathlib import Path

    above = str(Path(root).parent)
    located = locate_archive_images(table, above)
    assert located.missing == [] and len(located.urls) == len(table)
    assert all(located.urls[i].endswith(p) for i, p in zip(table["image_index"], table["path"],
                                                             strict=True))


def test_vinbigdata_kaggle_file_under_another_name_is_read_by_its_header(archives, tmp_path):
    """torchxrayvision ships Kaggle's VinBigData ``train.csv`` as ``vinbigdata-train.csv.gz``:
    given by hand under that name it is still the box layout (its header says so), so its
    findings are the 14 classes, not its box columns."""
    from cxrdask.archive.kinds.vindr import KAGGLE_CLASSES

    root = archives["vindr-cxr"]
    readers = pd.read_csv(f"{root}/annotations/image_labels_train.csv")
    rows = []
    for _, reader in readers.iterrows():
        named = [c for c in readers.columns[2:] if reader[c] == 1] or ["No finding"]
        rows += [{"image_id": reader["image_id"], "class_name": c,
                  "class_id": KAGGLE_CLASSES.index(c) if c in KAGGLE_CLASSES else 14,
                  "rad_id": reader["rad_id"], "x_min": 1.0, "y_min": 2.0, "x_max": 30.0,
                  "y_max": 40.0} for c in named]
    renamed = tmp_path / "vinbigdata-train.csv.gz"
    with gzip.open(renamed, "wt") as handle:
        pd.DataFrame(rows).to_csv(handle, index=False)
    table = read_archive(root, metadata=str(renamed))
    found = findings_of(table)
    assert not {"class_id", "class_name", "x_min", "x_max", "y_min", "y_max"} & set(found)
    assert {harmonise(c) for c in KAGGLE_CLASSES} <= set(found)
    physionet = read_archive(root).set_index("image_index").loc[table["image_index"]]
    for name in set(findings_of(physionet)) & set(found):
        np.testing.assert_array_equal(physionet[name].to_numpy(), table[name].to_numpy(), err_msg=name)


def test_a_label_file_with_columns_that_are_not_labels_is_refused_by_name(tmp_path):
    """A PhysioNet-style file (image_id, rad_id) whose columns are boxes or other values is
    refused, naming the column: no column becomes a finding unless the format says so."""
    (tmp_path / "boxes.csv").write_text("image_id,rad_id,class_id,x_min\na,R1,3,10.5\n")
    with pytest.raises(MetadataError, match=r"class_id, x_min are a box file's"):
        read_archive(str(tmp_path), metadata=str(tmp_path / "boxes.csv"))
    (tmp_path / "odd.csv").write_text("image_id,rad_id,Nodule/Mass,Grade\na,R1,1,severe\n")
    with pytest.raises(MetadataError, match=r"line 2, column 'Grade': 'severe' is not a 0/1 label"):
        read_archive(str(tmp_path), metadata=str(tmp_path / "odd.csv"))


@pytest.mark.parametrize("layout,label_file", [
    ("chexpert", "train.csv"), ("mimic-cxr-jpg", "mimic-cxr-2.0.0-chexpert.csv.gz"),
    ("rsna-pneumonia", "stage_2_train_labels.csv")])
def test_a_published_label_file_with_a_column_its_format_does_not_name_is_refused(
        archives, tmp_path, layout, label_file):
    """An extra column (a user's own, or another file's) is neither read as a finding nor
    dropped unseen: the reader names it and says where such columns belong."""
    import shutil
    from pathlib import Path

    copy = tmp_path / layout
    shutil.copytree(archives[layout], copy)
    path = next(Path(copy).rglob(label_file))
    frame = pd.read_csv(path, dtype=str)
    frame["Severity"] = "2"
    frame.to_csv(path, index=False)
    with pytest.raises(MetadataError, match=r"column\(s\) 'Severity' are not in .*published "
                                            r"header.*manifest\.csv"):
        read_archive(str(copy))
