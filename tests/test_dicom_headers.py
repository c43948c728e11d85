"""DICOM headers as the source of patients, studies, views, sexes and ages; labels keyed by
DICOM identifiers; objects that are not radiographs turned away.

A DICOM export without patient columns used to make each image its own patient (a patient
split became an image split); every header holds PatientID and StudyInstanceUID. Files are
written here as the archives write them (RSNA's bare-number ages, VinDr's ``045Y``, a PACS
export's suffix-less files keyed by AccessionNumber), not only as our reader expects.
"""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pandas as pd
import pytest

pydicom = pytest.importorskip("pydicom")

from cxrdask import FeatureStore, extract_features, make_archive  # noqa: E402
from cxrdask.archive.dicom_headers import (  # noqa: E402
    age_in_years,
    read_dicom_headers,
    read_header,
)
from cxrdask.archive.kinds import detect_archive, read_archive  # noqa: E402
from cxrdask.archive.synthetic.layouts import encode_dicom  # noqa: E402
from cxrdask.errors import ImageDecodeError, MetadataError, NotARadiographError  # noqa: E402
from cxrdask.imaging.decode import decode_gray  # noqa: E402
from cxrdask.store.features import STATUS_FAILED, STATUS_OK  # noqa: E402
from tests.helpers import ENV  # noqa: E402

SMALL = dict(weights="random", backbone="resnet18", image_size=64)


def _dicom(side: int = 512, **header) -> bytes:
    stored = np.random.default_rng(side).integers(0, 4096, (side, side)).astype(np.uint16)
    return encode_dicom(stored, header=header or None)


@pytest.mark.parametrize("text,years", [("045Y", 45), ("006M", 0), ("018M", 1), ("010W", 0),
                                        ("003D", 0), ("58", 58), ("", -1), ("Y", -1),
                                        ("45 Y", -1), ("abc", -1)])
def test_dicom_ages_in_years(text, years):
    assert age_in_years(text) == years


def test_a_header_is_read_without_its_pixel_data():
    data = _dicom(512, PatientID="P1", StudyInstanceUID="1.2.3", ViewPosition="PA",
                  PatientSex="F", PatientAge="061Y", Modality="CR", AccessionNumber="A9")
    pixel_offset = data.find(b"\xe0\x7f\x10\x00")  # the PixelData element's tag
    header = read_header(io.BytesIO(data))
    assert {k: header[k] for k in ("PatientID", "StudyInstanceUID", "ViewPosition", "PatientSex",
                                   "PatientAge", "Modality", "AccessionNumber")} == {
        "PatientID": "P1", "StudyInstanceUID": "1.2.3", "ViewPosition": "PA",
        "PatientSex": "F", "PatientAge": "061Y", "Modality": "CR", "AccessionNumber": "A9"}
    # at most what lies before the pixel data and its element header, nothing of its 512 KB
    assert 0 < header["header_bytes"] <= pixel_offset + 12
    assert header["header_bytes"] < len(data) / 100


def test_unreadable_files_are_rows_with_their_error(tmp_path):
    good = tmp_path / "a.dcm"
    good.write_bytes(_dicom(32, PatientID="P1"))
    (tmp_path / "b.dcm").write_bytes(b"not a dicom at all")
    headers = read_dicom_headers([str(good), str(tmp_path / "b.dcm"), str(tmp_path / "gone.dcm")])
    assert list(headers["PatientID"]) == ["P1", "", ""]
    assert headers["error"].iat[0] == "" and "FileNotFoundError" in headers["error"].iat[2]
    assert headers["error"].iat[1] != ""


def test_headers_read_on_the_cluster_equal_those_read_in_threads(tmp_path, cluster_client):
    urls = []
    for k in range(600):  # three tasks of 256 files
        path = tmp_path / f"{k}.dcm"
        path.write_bytes(_dicom(16, PatientID=f"P{k % 7}", PatientAge=f"{k % 90:03d}Y"))
        urls.append(str(path))
    here = read_dicom_headers(urls)
    there = read_dicom_headers(urls, client=cluster_client)
    pd.testing.assert_frame_equal(here, there)
    assert list(here["PatientID"][:8]) == [f"P{k % 7}" for k in range(8)]


def _manifest_export(root, with_patients: bool):
    """A DICOM export with a manifest of paths and labels, and patients only in the headers:
    6 patients, 3 images each, two studies per patient."""
    rows = []
    for k in range(18):
        patient, study = k // 3, k // 3 * 10 + (k % 3 == 2)
        path = root / "export" / f"img{k:02d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_dicom(24 + k, PatientID=f"MRN{patient:04d}",
                                StudyInstanceUID=f"1.2.840.99.{study}",
                                ViewPosition="LL" if k % 3 == 1 else "PA",
                                PatientSex="MF"[patient % 2], PatientAge=f"{40 + patient:03d}Y"))
        row = {"path": f"export/img{k:02d}.dcm", "Effusion": k % 2}
        if with_patients:
            row["patient_id"] = f"given{patient}"
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)


def test_a_manifest_without_patients_takes_them_from_the_headers(tmp_path):
    _manifest_export(tmp_path, with_patients=False)
    frame = read_archive(str(tmp_path))
    assert frame.attrs["archive"] == "dicom"
    assert frame["patient"].tolist()[:4] == ["MRN0000", "MRN0000", "MRN0000", "MRN0001"]
    assert frame["patient_id"].nunique() == 6  # not 18: a patient split stays one
    assert frame["study"].nunique() == 12
    assert (frame["view_position"] == "LL").sum() == 6 and set(frame["sex"]) == {"M", "F"}
    assert frame["age"].tolist()[:4] == [40, 40, 40, 41]
    assert "from 18 DICOM headers" in frame.attrs["report"]
    assert frame.attrs["dicom_headers"]["filled"]["patient"] == 18


def test_a_manifests_own_patients_are_kept(tmp_path):
    _manifest_export(tmp_path, with_patients=True)
    frame = read_archive(str(tmp_path))
    assert frame["patient"].tolist()[:4] == ["given0", "given0", "given0", "given1"]
    assert frame["view_position"].tolist()[:2] == ["PA", "LL"]  # what it left out is read


def test_rsna_and_vindr_take_view_sex_and_age_from_their_headers(tmp_path):
    for layout in ("rsna-pneumonia", "vindr-cxr"):
        make_archive(str(tmp_path / layout), 30, size=32, layout=layout, seed=4, threads=1)
        frame = read_archive(str(tmp_path / layout))
        assert set(frame["view_position"]) <= {"PA", "AP"} and "" not in set(frame["view_position"])
        assert set(frame["sex"]) == {"M", "F"} and (frame["age"] > 0).all()
    # RSNA writes ages as bare numbers: read as years
    first = next((tmp_path / "rsna-pneumonia" / "stage_2_train_images").glob("*.dcm"))
    assert pydicom.dcmread(first).PatientAge.isdigit()


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A synthetic PACS export: suffix-less files, reports.csv keyed by AccessionNumber."""
    root = tmp_path_factory.mktemp("export")
    make_archive(str(root), 80, size=64, layout="dicom-export", seed=5, threads=1)
    return root


def test_labels_keyed_by_accession_number_find_their_files(export):
    assert detect_archive(str(export)).kind == "dicom"
    frame = read_archive(str(export))
    reports = pd.read_csv(export / "reports.csv")
    assert len(frame) == 80 and frame["patient_id"].nunique() < 40
    headers = read_dicom_headers([str(export / p) for p in frame["path"]])
    # each image carries its study's report labels
    by_accession = reports.set_index("AccessionNumber")
    expected = by_accession.loc[headers["AccessionNumber"], "Effusion"].to_numpy()
    np.testing.assert_array_equal(frame["Effusion"].to_numpy(), expected)
    assert (frame["image_index"] == headers["SOPInstanceUID"].to_numpy()).all()
    assert "labels by AccessionNumber, 80 of 80 DICOM files" in frame.attrs["report"]


def test_labels_by_sop_instance_uid_say_what_they_left_out(export, tmp_path):
    headers = read_dicom_headers([str(p) for p in sorted(export.rglob("IM*"))])
    labels = pd.DataFrame({"SOPInstanceUID": [*headers["SOPInstanceUID"][:50], "1.2.3.404"],
                           "Pneumothorax": [1, 0] * 25 + [1]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    frame = read_archive(str(export), metadata=str(tmp_path / "labels.csv"))
    assert len(frame) == 50 and frame["Pneumothorax"].sum() == 25
    assert "30 files without a label row and 1 label rows without a file" in frame.attrs["report"]
    labels.iloc[[0, 0]].to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(MetadataError, match=r"line 3: SOPInstanceUID .* labelled twice"):
        read_archive(str(export), metadata=str(tmp_path / "twice.csv"))
    labels.iloc[[-1]].to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(MetadataError, match="none of the 80 DICOM files"):
        read_archive(str(export), metadata=str(tmp_path / "none.csv"))


def test_objects_that_are_not_radiographs_are_refused_unless_allowed():
    ct = _dicom(32, Modality="CT")
    with pytest.raises(NotARadiographError, match="modality CT is not a projection radiograph"):
        decode_gray(ct, "slice")
    assert decode_gray(ct, "slice", modalities="any")[0].size == (32, 32)
    assert decode_gray(ct, "slice", modalities="CR,DX,CT")[0].size == (32, 32)
    assert decode_gray(_dicom(32, Modality="DX"), "dx")[0].size == (32, 32)
    assert decode_gray(_dicom(32), "no modality")[0].size == (32, 32)  # encode_dicom: DX
    with pytest.raises(ImageDecodeError):
        decode_gray(_dicom(32, Modality="MR"), "mr", modalities=["CR"])


def test_an_export_extracts_with_patients_from_headers_and_fails_what_is_not_a_radiograph(
        export, tmp_path, cluster_client):
    store_url = str(tmp_path / "export.zarr")
    extract_features(None, str(export), store_url, client=cluster_client, chunk_rows=16,
                     max_failed_fraction=0.5, **SMALL)
    store = FeatureStore.open(store_url)
    frame = read_archive(str(export))
    headers = read_dicom_headers([str(export / p) for p in frame["path"]])
    other = headers["Modality"].isin(["CT", "OT"]).to_numpy()
    order = pd.Index(frame["image_index"]).get_indexer(store.read("image"))
    status, errors = store.read("status"), store.read("error")
    assert other.any()
    assert (status[other[order]] == STATUS_FAILED).all() and (status[~other[order]] == STATUS_OK).all()
    assert all("not a projection radiograph" in e for e in errors[other[order]])
    # one patient, one split: the split was made by the headers' PatientIDs
    patients = store.read("patient_id")
    splits = store.read("split")
    for patient in np.unique(patients):
        assert len(np.unique(splits[patients == patient])) == 1
    assert np.unique(patients).size == frame["patient_id"].nunique() < store.n_rows / 2


@pytest.mark.slow
def test_the_command_line_allows_other_modalities(export, tmp_path):
    store = tmp_path / "any.zarr"
    done = subprocess.run(
        ["cxrdask", "extract", "--images", str(export), "--store", str(store), "--weights",
         "random", "--backbone", "resnet18", "--image-size", "64", "--workers", "1",
         "--modalities", "any", "--quiet"], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (FeatureStore.open(str(store)).read("status") == STATUS_OK).all()
    refused = subprocess.run(["cxrdask", "extract", "--images", str(export), "--store",
                              str(tmp_path / "x.zarr"), "--modalities", "C T"],
                             capture_output=True, text=True, env=ENV, timeout=120)
    assert refused.returncode != 0 and "modalities must be 'any'" in refused.stderr


def test_headers_on_object_storage_move_no_pixel_data():
    """On S3 a header costs one ranged request of a 64 KB block, not the 5 MB fsspec reads by
    default: counted by a proxy in front of a local S3 server."""
    from cxrdask.testing import FaultyProxy, local_s3_server

    with local_s3_server("dicoms") as options:
        import fsspec

        fs = fsspec.filesystem("s3", **options)
        urls = []
        for k in range(12):
            data = _dicom(512, PatientID=f"P{k}", Modality="DX")  # 512 KB of pixels each
            fs.pipe(f"dicoms/export/{k}.dcm", data)
            urls.append(f"s3://dicoms/export/{k}.dcm")
        with FaultyProxy(options["client_kwargs"]["endpoint_url"]) as proxy:
            via = {**options, "client_kwargs": {**options["client_kwargs"],
                                                "endpoint_url": proxy.endpoint}}
            headers = read_dicom_headers(urls, storage_options=via)
            assert list(headers["PatientID"]) == [f"P{k}" for k in range(12)]
            assert (headers["error"] == "").all()
            moved, gets = proxy.bytes_sent["GET"], proxy.requests["GET"]
        assert gets == 12  # one ranged read a file
        # a block (and the 132 bytes that say it is DICOM) a file: none of the 6 MB of pixels
        assert 0 < moved <= 12 * (2**16 + 132) < 12 * len(data) / 7
