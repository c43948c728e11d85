"""Metadata parsing: the three real CSV variants, every bad-row kind, image location."""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxrdask.archive.images import locate_images
from cxrdask.archive.kinds.nih import parse_age, read_metadata
from cxrdask.archive.labels import LABELS, LabelParseError, format_labels, parse_labels
from cxrdask.archive.synthetic import format_csv, make_metadata
from cxrdask.errors import MetadataError, MissingColumnError
from cxrdask.head.encoding import encode_demographics

V2020_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
SAMPLE_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                 "View Position,OriginalImageWidth,OriginalImageHeight,"
                 "OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y")


def write(tmp_path, text, name="Data_Entry_2017.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_parse_labels_order_and_no_finding():
    vector = parse_labels("Effusion|Atelectasis")
    assert vector.dtype == np.uint8 and vector.tolist()[:3] == [1, 0, 1] and vector.sum() == 2
    assert parse_labels("No Finding").sum() == 0
    assert format_labels(vector) == "Atelectasis|Effusion"
    with pytest.raises(LabelParseError, match="unknown label 'Infiltrate'"):
        parse_labels("Infiltrate")
    with pytest.raises(LabelParseError, match="combined"):
        parse_labels("No Finding|Mass")


@given(st.sets(st.sampled_from(LABELS), min_size=1))
def test_label_round_trip(names):
    text = "|".join(sorted(names, key=len))  # any order, as in the real file
    assert format_labels(parse_labels(text)).split("|") == [n for n in LABELS if n in names]


@given(st.text(max_size=30))
def test_label_parser_never_crashes(text):
    try:
        vector = parse_labels(text)
    except LabelParseError:
        return
    assert vector.shape == (14,)


@pytest.mark.parametrize("text, years", [("58", 58), ("058Y", 58), ("013M", 1), ("011M", 0),
                                         ("001D", 0), ("411Y", 411), ("7", 7), ("60.0", 60)])
def test_parse_age(text, years):
    assert parse_age(text) == years


@given(st.text(max_size=8))
def test_age_parser_only_raises_value_error(text):
    with contextlib.suppress(ValueError):
        assert parse_age(text) >= 0


def test_v2020_variant(tmp_path):
    text = (V2020_HEADER + "\n"
            "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143\n"
            "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n"
            "00000003_000.png,Hernia,0,3,81,F,AP,2582,2991,0.143,0.143\n")
    frame, report = read_metadata(write(tmp_path, text), return_report=True)
    assert report.variant == "v2020" and len(frame) == 3
    assert frame["age"].tolist() == [58, 58, 81]
    assert frame["sex"].tolist() == ["M", "M", "F"]
    assert frame.loc[1, "Emphysema"] == 1 and frame.loc[1, "Cardiomegaly"] == 1
    assert frame["original_width"].tolist() == [2682, 2894, 2582]
    assert frame["pixel_spacing_y"].iloc[0] == pytest.approx(0.143)


def test_kaggle2017_trailing_comma_and_impossible_age(tmp_path):
    text = (V2020_HEADER + ",\n"
            "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
            "00000002_000.png,No Finding,0,2,414,M,PA,2500,2048,0.171,0.171,\n"
            "00000003_000.png,Effusion|Infiltration,0,3,148,F,PA,2500,2048,0.168,0.168,\n"
            "00000004_000.png,Mass|Nodule,0,4,82,M,AP,2500,2048,0.168,0.168,\n")
    frame, report = read_metadata(write(tmp_path, text), return_report=True)
    assert report.variant == "kaggle2017"
    assert frame["image_index"].tolist() == ["00000001_000.png", "00000004_000.png"]
    assert report.dropped_for_age["image_index"].tolist() == ["00000002_000.png",
                                                              "00000003_000.png"]
    assert "age > 123" in report.summary()
    kept_all = read_metadata(write(tmp_path, text), max_age=500)
    assert len(kept_all) == 4


def test_rows_with_trailing_comma_under_plain_header(tmp_path):
    text = (V2020_HEADER + "\n"
            "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,\n")
    frame = read_metadata(write(tmp_path, text))
    assert frame.loc[0, "image_index"] == "00000001_000.png"  # not shifted into the index
    assert frame.loc[0, "Cardiomegaly"] == 1


def test_sample_labels_variant(tmp_path):
    text = (SAMPLE_HEADER + "\n"
            "00000013_005.png,Emphysema|Infiltration|Pleural_Thickening|Pneumothorax,5,13,060Y,M,"
            "AP,3056,2544,0.139,0.139\n"
            "00000032_037.png,Cardiomegaly|Edema|Effusion,37,32,055Y,F,AP,2500,2048,0.168,0.168\n"
            "00000100_000.png,No Finding,0,100,013M,M,PA,2500,2048,0.168,0.168\n"
            "00000101_000.png,No Finding,0,101,001D,F,PA,2500,2048,0.168,0.168\n"
            "00000102_000.png,No Finding,0,102,411Y,F,PA,2500,2048,0.168,0.168\n")
    frame, report = read_metadata(write(tmp_path, text, "sample_labels.csv"), return_report=True)
    assert report.variant == "sample_labels"
    assert frame["age"].tolist() == [60, 55, 1, 0]
    assert report.dropped_for_age["age"].tolist() == [411]
    assert frame["original_height"].tolist() == [2544, 2048, 2048, 2048]
    assert frame.loc[0, list(LABELS)].sum() == 4


@pytest.mark.parametrize("variant", ["kaggle2017", "v2020", "sample_labels"])
def test_synthetic_csv_round_trips_every_variant(tmp_path, variant):
    rows = make_metadata(300, seed=5)
    frame = read_metadata(write(tmp_path, format_csv(rows, variant)), max_age=10_000)
    assert frame["image_index"].tolist() == rows["image_index"].tolist()
    np.testing.assert_array_equal(frame.loc[:, list(LABELS)].to_numpy(),
                                  rows.loc[:, list(LABELS)].to_numpy())
    assert frame["follow_up"].tolist() == rows["follow_up"].tolist()
    if variant != "v2020":
        assert frame["age"].tolist() == rows["age"].tolist()


BAD_ROWS = [
    ("00000002_000.png,Pneumonitis,0,2,40,M,PA,1,1,0.1,0.1", "Finding Labels", "unknown label"),
    ("00000002_000.png,No Finding|Mass,0,2,40,M,PA,1,1,0.1,0.1", "Finding Labels", "combined"),
    ("00000002_000.png,,0,2,40,M,PA,1,1,0.1,0.1", "Finding Labels", "empty"),
    ("00000002_000.png,Mass,0,2,,M,PA,1,1,0.1,0.1", "Patient Age", "missing value"),
    ("00000002_000.png,Mass,0,2,forty,M,PA,1,1,0.1,0.1", "Patient Age", "not a valid"),
    ("00000002_000.png,Mass,0,2,40,X,PA,1,1,0.1,0.1", "Patient Gender", "unknown sex"),
    ("00000001_000.png,Mass,0,2,40,M,PA,1,1,0.1,0.1", "Image Index", "duplicate image index"),
    ("00000002_000.png,Mass,0,two,40,M,PA,1,1,0.1,0.1", "Patient ID", "not a valid"),
    ("00000002_000.png,Mass,x,2,40,M,PA,1,1,0.1,0.1", "Follow-up #", "not a valid"),
    (",Mass,0,2,40,M,PA,1,1,0.1,0.1", "Image Index", "missing image index"),
    ("00000002_000.png,Mass,0,2,40,M,,1,1,0.1,0.1", "View Position", "missing view"),
]


@pytest.mark.parametrize("row, column, reason", BAD_ROWS)
def test_bad_row_raises_naming_line_and_column(tmp_path, row, column, reason):
    text = (V2020_HEADER + "\n00000001_000.png,Cardiomegaly,0,1,58,M,PA,1,1,0.1,0.1\n" + row +
            "\n00000003_000.png,Hernia,0,3,81,F,AP,1,1,0.1,0.1\n")
    path = write(tmp_path, text)
    with pytest.raises(MetadataError) as info:
        read_metadata(path)
    problem = info.value.problems[0]
    assert (problem.line, problem.column) == (3, column)
    assert reason in problem.reason
    assert "line 3" in str(info.value) and column in str(info.value)
    frame, report = read_metadata(path, errors="report", return_report=True)
    assert len(frame) == 2 and [p.line for p in report.problems] == [3]
    assert "line 3" in report.summary()


def test_missing_required_column(tmp_path):
    text = "Image Index,Finding Labels,Patient ID\n00000001_000.png,Mass,1\n"
    with pytest.raises(MissingColumnError, match="Follow-up #"):
        read_metadata(write(tmp_path, text))


def test_encode_demographics():
    encoded = encode_demographics(np.array([58, 7]), np.array(["M", "F"]), np.array(["PA", "AP"]))
    np.testing.assert_allclose(encoded, [[0.58, 1, 1], [0.07, 0, 0]])
    assert encode_demographics(np.array([50]), np.array(["F"])).shape == (1, 2)


@pytest.mark.parametrize("layout", ["flat", "kaggle"])
def test_locate_images_both_layouts(tmp_path, layout):
    names = [f"{i:08d}_000.png" for i in range(5)]
    for i, name in enumerate(names):
        folder = tmp_path / ("images" if layout == "flat" else f"images_{i // 3 + 1:03d}/images")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    (tmp_path / "Data_Entry_2017.csv").write_text("not an image")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "00000009_000.png").write_bytes(b"x")  # outside the layout: ignored
    located = locate_images(str(tmp_path), expected=[*names, "00000077_000.png"])
    assert sorted(located.urls) == names
    assert located.missing == ["00000077_000.png"]
    assert located.urls[names[4]].endswith(
        "images/00000004_000.png" if layout == "flat" else "images_002/images/00000004_000.png")


def test_the_local_listing_equals_fsspecs_find_and_follows_linked_folders(tmp_path, monkeypatch):
    """find_files walks the local disk itself (fsspec's local find stats every file: 9 of
    the 15 s a million images took). It lists what fsspec lists: nested and hidden files,
    a file given as the path, a path that does not exist, a relative path. One difference,
    on purpose: an images folder that is a link to another disk is followed (fsspec lists
    the link itself as a file, and every image behind it was "missing"), and a link that
    loops back up the tree is not walked twice."""
    import fsspec

    from cxrdask._fs import find_files

    root = tmp_path / "archive"
    (root / "images_001" / "images").mkdir(parents=True)
    for name in ("00000002_000.png", ".DS_Store", "b.png", "a.png"):
        (root / "images_001" / "images" / name).write_bytes(b"x")
    (root / "Data_Entry_2017.csv").write_text("x")
    (root / "empty").mkdir()
    fs = fsspec.filesystem("file")
    monkeypatch.chdir(tmp_path)
    for path in (str(root), f"{root}/", str(root / "Data_Entry_2017.csv"), str(root / "nothing"),
                 "archive", str(root / "empty")):
        assert find_files(fs, path) == fs.find(path), path
    assert len(find_files(fs, str(root))) == 5

    elsewhere = tmp_path / "big-disk" / "images"
    elsewhere.mkdir(parents=True)
    (elsewhere / "00000001_000.png").write_bytes(b"x")
    (root / "images_002").mkdir()
    (root / "images_002" / "images").symlink_to(elsewhere, target_is_directory=True)
    assert f"{root}/images_002/images/00000001_000.png" in find_files(fs, str(root))
    located = locate_images(str(root), expected=["00000001_000.png", "00000002_000.png"])
    assert located.missing == [] and located.duplicates == []

    (root / "images_001" / "images" / "up").symlink_to(root, target_is_directory=True)  # a loop
    listed = find_files(fs, str(root))
    assert len(listed) == len(set(listed)) == 6 and not any("/up/" in path for path in listed)


def test_synthetic_archive_round_trip(small_archive):
    frame, report = read_metadata(small_archive.metadata_url, return_report=True)
    located = locate_images(small_archive.root, expected=frame["image_index"])
    assert located.missing == [] and len(located) == small_archive.n_images
    assert report.rows_read == small_archive.n_images
    assert len(frame) + len(report.dropped_for_age) == small_archive.n_images
    assert isinstance(frame, pd.DataFrame)
