"""Synthetic archives in the published layouts of CheXpert, MIMIC-CXR-JPG, PadChest,
VinDr-CXR and RSNA Pneumonia: the same learnable radiographs as the NIH stand-in, written
in each archive's folders, file formats and label files.

The findings are drawn with NIH's signs and prevalence (:func:`make_metadata`), then written
as each archive writes them: CheXpert's and MIMIC's ``1.0``/``0.0``/``-1.0``/blank (some
positives uncertain, some negatives not mentioned, ``No Finding`` where nothing is
positive), PadChest's Spanish-report terms, VinDr-CXR's three readers per image (one of
them sometimes missing a finding), RSNA's boxes. Images are JPEG (CheXpert, MIMIC), 16-bit
PNG holding 12 bits (PadChest), or DICOM in four transfer syntaxes, a third of them
``MONOCHROME1`` (VinDr-CXR, RSNA), whose headers hold what the archives' DICOM headers hold:
view, sex and age (RSNA's ages as bare numbers, as RSNA wrote them).

``dicom-export`` is a hospital's export rather than a published archive: DICOM files named
as PACS exports name them (``DICOM/<patient>/<study>/IM00001``, no suffix), headers with
every identifier (PatientID, StudyInstanceUID, SOPInstanceUID, AccessionNumber), view, sex
and age (``045Y``), a few objects that are not radiographs (a CT slice, a secondary
capture), and the labels a report extraction gives: ``reports.csv``, one row per
AccessionNumber, no paths.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image

from cxrdask.archive.labels import LABELS
from cxrdask.choices import LAYOUTS, Layout
from cxrdask.errors import MissingExtraError

DICOM_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90",
                  "1.2.840.10008.1.2.1.99")  # explicit LE, RLE, JPEG 2000 lossless, deflated
_DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
DICOM_ENCODING = f"dicom:{DICOM_SYNTAXES[0]}:MONOCHROME2"

# NIH finding -> the CheXpert column that holds it (the rest are drawn at random).
_CHEXPERT_OF_NIH = {"Cardiomegaly": "Cardiomegaly", "Edema": "Edema",
                    "Consolidation": "Consolidation", "Pneumonia": "Pneumonia",
                    "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
                    "Effusion": "Pleural Effusion", "Mass": "Lung Lesion", "Nodule": "Lung Lesion",
                    "Infiltration": "Lung Opacity"}
_PADCHEST_TERMS = {"Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly",
                   "Effusion": "pleural effusion", "Infiltration": "infiltrates", "Mass": "mass",
                   "Nodule": "nodule", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax",
                   "Consolidation": "consolidation", "Edema": "pulmonary edema",
                   "Emphysema": "emphysema", "Fibrosis": "pulmonary fibrosis",
                   "Pleural_Thickening": "pleural thickening", "Hernia": "hiatal hernia"}
_VINDR_OF_NIH = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
                 "Effusion": "Pleural effusion", "Infiltration": "Infiltration",
                 "Mass": "Nodule/Mass", "Nodule": "Nodule/Mass", "Pneumothorax": "Pneumothorax",
                 "Consolidation": "Consolidation", "Fibrosis": "Pulmonary fibrosis",
                 "Pleural_Thickening": "Pleural thickening", "Emphysema": "Emphysema",
                 "Edema": "Edema", "Pneumonia": "Pneumonia"}
_VINDR_COLUMNS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly",
                  "Clavicle fracture", "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD",
                  "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst", "Mediastinal shift",
                  "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
                  "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD", "Lung tumor",
                  "Pneumonia", "Tuberculosis", "Other diseases", "No finding")

# (relative path, encoding) or (relative path, encoding, DICOM header) per row, and the label
# files as {relative path: text}.
Placed = tuple[str, str] | tuple[str, str, dict[str, str]]
LayoutPlan = tuple[list[Placed], dict[str, str | bytes]]


def encode_image(pixels: np.ndarray, encoding: str, seed: int = 0,
                 header: dict[str, str] | None = None) -> bytes:
    """An 8-bit radiograph as ``png``, ``jpeg`` (quality 90), ``png16`` (12 bits in a 16-bit
    PNG, as PadChest's) or ``dicom:<transfer syntax>:<MONOCHROME1|MONOCHROME2>`` (with
    ``header``'s elements, by keyword)."""
    buffer = io.BytesIO()
    if encoding == "png":
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    elif encoding == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    elif encoding == "png16":
        Image.fromarray((pixels.astype(np.uint16) * 16).astype(np.uint16)).save(
            buffer, format="PNG", compress_level=1)
    elif encoding == "dicom-jpeg":
        return encode_jpeg_dicom(pixels, 90, header)
    elif encoding.startswith("dicom:"):
        _, syntax, photometric = encoding.split(":")
        return encode_dicom(pixels.astype(np.uint16) * 16, syntax, photometric, seed, header)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return buffer.getvalue()


def _set_elements(ds, header: dict[str, str] | None) -> None:
    """``header``'s elements on ``ds``, by keyword. Values are written as the archives wrote
    them, non-conformant ones too (RSNA's ages without a unit), without pydicom's warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in (header or {}).items():
            setattr(ds, keyword, value)


def encode_jpeg_dicom(gray: np.ndarray, quality: int = 90, header: dict[str, str] | None = None
                      ) -> bytes:
    """An 8-bit MONOCHROME2 DICOM whose pixels are one JPEG baseline frame, as RSNA
    Pneumonia's files are (NIH's PNGs re-encoded): a CR secondary capture, with
    ``header``'s elements."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, JPEGBaseline8Bit

    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "JPEG", quality=quality)
    digest = int(hashlib.sha1(gray.tobytes()).hexdigest(), 16) % 10**20
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")  # secondary capture, as RSNA's
    meta.MediaStorageSOPInstanceUID = UID(f"1.2.826.0.1.3680043.10.1418.3.{digest}")
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    _set_elements(ds, header)
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def copy_encoding(encoding: str) -> str:
    """How a copy of another archive's image is written in a layout whose own images are
    ``encoding``: JPEG in DICOM where they are DICOM (as RSNA re-encoded NIH's), else the
    same."""
    return "dicom-jpeg" if encoding.startswith("dicom:") else encoding


def encode_dicom(stored: np.ndarray, syntax: str = DICOM_SYNTAXES[0],
                 photometric: str = "MONOCHROME2", seed: int = 0,
                 header: dict[str, str] | None = None) -> bytes:
    """A digital X-ray DICOM file of 12-bit ``stored`` values (MONOCHROME2 meaning: high is
    bright). ``MONOCHROME1`` stores ``4095 - value`` and says so, as such detectors do.
    ``header``: elements by keyword (``PatientID``, ``Modality``, ...) set on the dataset,
    after the defaults (a DX image, its SOP instance UID from its pixels)."""
    try:
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import UID, ExplicitVRLittleEndian
    except ImportError:
        raise MissingExtraError("synthetic DICOM archives (vindr-cxr, rsna-pneumonia) need "
                                "pydicom and its handlers: pip install 'cxrdask[dicom]'") from None

    digest = int(hashlib.sha1(stored.tobytes()).hexdigest(), 16) % 10**20
    uid = f"1.2.826.0.1.3680043.10.1418.{seed}.{digest}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(_DX_STORAGE), UID(uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = _DX_STORAGE, uid, "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    _set_elements(ds, header)
    meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    values = 4095 - stored if photometric == "MONOCHROME1" else stored
    ds.PixelData = values.astype(np.uint16).tobytes()
    if syntax in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):
        ds.compress(UID(syntax))
    elif syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.1f")


def _chexpert_values(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """CheXpert's 14 columns from NIH labels: positives 1.0 (10% uncertain -1.0), negatives
    0.0 or blank, ``No Finding`` 1.0 where nothing is positive (sometimes beside a -1.0)."""
    from cxrdask.archive.kinds.chexpert import FINDINGS

    n = len(frame)
    out = pd.DataFrame(index=frame.index)
    for column in FINDINGS:
        nih = [name for name, c in _CHEXPERT_OF_NIH.items() if c == column]
        positive = (frame[nih].to_numpy().max(axis=1) == 1 if nih
                    else rng.random(n) < 0.05)
        values = np.where(rng.random(n) < 0.5, 0.0, np.nan)
        values[positive] = np.where(rng.random(positive.sum()) < 0.1, -1.0, 1.0)
        values[(~positive) & (rng.random(n) < 0.03)] = -1.0
        out[column] = values
    none = ~(out.to_numpy() == 1).any(axis=1)
    out.insert(0, "No Finding", np.where(none, 1.0, np.nan))
    return out


def _chexpert(frame: pd.DataFrame, rng: np.random.Generator) -> LayoutPlan:
    """CheXpert's layout: about one image in seven is a lateral view (as in its published
    train.csv), ``Frontal/Lateral`` ``Lateral`` with ``AP/PA`` blank, named ``view*_lateral``."""
    patients = frame["patient_id"].to_numpy()
    valid = np.isin(patients, np.unique(patients)[::10])
    study = frame.groupby("patient_id").cumcount() + 1
    folder = np.where(valid, "valid", "train")
    lateral = rng.random(len(frame)) < 1 / 7
    paths = [f"{f}/patient{p:05d}/study{s}/" + ("view2_lateral.jpg" if side else "view1_frontal.jpg")
             for f, p, s, side in zip(folder, patients, study, lateral, strict=True)]
    table = pd.DataFrame({"Path": ["CheXpert-v1.0-small/" + p for p in paths],
                          "Sex": frame["sex"].map({"M": "Male", "F": "Female"}),
                          "Age": np.where(rng.random(len(frame)) < 0.01, 0, frame["age"] % 100),
                          "Frontal/Lateral": np.where(lateral, "Lateral", "Frontal"),
                          "AP/PA": np.where(lateral, None, frame["view_position"])})
    table = pd.concat([table, _chexpert_values(frame, rng)], axis=1)
    files: dict[str, str | bytes] = {"train.csv": _csv(table[~valid]),
                                     "valid.csv": _csv(table[valid])}
    return [(p, "jpeg") for p in paths], files


def _mimic(frame: pd.DataFrame, rng: np.random.Generator) -> LayoutPlan:
    subject = 10_000_000 + frame["patient_id"].to_numpy()
    study = 50_000_000 + np.arange(len(frame))
    dicom = [f"{rng.integers(16**8):08x}-{rng.integers(16**8):08x}-{i:06d}" for i in range(len(frame))]
    paths = [f"files/p{str(s)[:2]}/p{s}/s{t}/{d}.jpg"
             for s, t, d in zip(subject, study, dicom, strict=True)]
    labels = pd.concat([pd.DataFrame({"subject_id": subject, "study_id": study}),
                        _chexpert_values(frame, rng)], axis=1)
    order = ["subject_id", "study_id", *sorted(c for c in labels.columns if c not in
                                               ("subject_id", "study_id"))]
    meta = pd.DataFrame({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                         "ViewPosition": frame["view_position"], "Rows": 3056, "Columns": 2544,
                         "StudyDate": 21800506, "StudyTime": 213014.531})
    split = np.where(np.isin(frame["patient_id"], np.unique(frame["patient_id"])[::10]), "test",
                     np.where(np.isin(frame["patient_id"], np.unique(frame["patient_id"])[1::10]),
                              "validate", "train"))
    splits = pd.DataFrame({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                           "split": split})
    files: dict[str, str | bytes] = {
        "mimic-cxr-2.0.0-chexpert.csv.gz": gzip.compress(_csv(labels[order]).encode()),
        "mimic-cxr-2.0.0-metadata.csv.gz": gzip.compress(_csv(meta).encode()),
        "mimic-cxr-2.0.0-split.csv.gz": gzip.compress(_csv(splits).encode())}
    return [(p, "jpeg") for p in paths], files


def _padchest(frame: pd.DataFrame, rng: np.random.Generator) -> LayoutPlan:
    terms = []
    for _, row in frame[list(LABELS)].iterrows():
        found = [_PADCHEST_TERMS[name] for name in LABELS if row[name]]
        terms.append(repr(found or ["normal"]))
    labels: list[str | None] = list(terms)
    for row in np.flatnonzero(rng.random(len(frame)) < 0.01):
        labels[row] = None  # a few rows without labels, as the real file has
    image_id = [f"2168401113669640{rng.integers(10**12):012d}_{i:02d}-{i % 200:03d}-{i % 99:03d}.png"
                for i in range(len(frame))]
    directory = (np.arange(len(frame)) // 50).astype(str)
    prefix = rng.integers(10**17, 10**18)
    patient = [f"{prefix}{p:018d}" for p in frame["patient_id"]]  # 36 digits, as the real ids
    birth = (2012 - frame["age"] % 100).astype(int)
    table = pd.DataFrame({
        "ImageID": image_id, "ImageDir": directory, "StudyDate_DICOM": "20120503",
        "StudyID": [f"{p}s" for p in patient], "PatientID": patient, "PatientBirth": birth,
        "PatientSex_DICOM": frame["sex"], "ViewPosition_DICOM": frame["view_position"],
        "Projection": frame["view_position"], "MethodProjection": "Manual review of DICOM fields",
        "Pediatric": "No", "Modality_DICOM": "CR", "Manufacturer_DICOM": "PhilipsMedicalSystems",
        "PhotometricInterpretation_DICOM": "MONOCHROME2", "BitsStored_DICOM": 12,
        "Rows_DICOM": 2000, "Columns_DICOM": 2000, "Labels": labels,
        "MethodLabel": np.where(rng.random(len(frame)) < 0.27, "Physician", "RNN_model")})
    table.index.name = ""
    text = table.to_csv(index=True, lineterminator="\n")  # the real file's first column is unnamed
    files: dict[str, str | bytes] = {"PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv": text}
    return [(f"{d}/{i}", "png16") for d, i in zip(directory, image_id, strict=True)], files


def _dicom_encodings(n: int, rng: np.random.Generator) -> list[str]:
    syntax = rng.choice(len(DICOM_SYNTAXES), n)
    mono1 = rng.random(n) < 1 / 3
    return [f"dicom:{DICOM_SYNTAXES[s]}:{'MONOCHROME1' if m else 'MONOCHROME2'}"
            for s, m in zip(syntax, mono1, strict=True)]


def _vindr(frame: pd.DataFrame, rng: np.random.Generator) -> LayoutPlan:
    ids = [f"{rng.integers(2**62):016x}{i:016x}" for i in range(len(frame))]
    rows = []
    for image_id, (_, row) in zip(ids, frame[list(LABELS)].iterrows(), strict=True):
        named = {_VINDR_OF_NIH[name] for name in LABELS if row[name] and name in _VINDR_OF_NIH}
        for reader in range(3):  # three radiologists; the third sometimes misses a finding
            seen = {c for c in named if reader < 2 or rng.random() < 0.8}
            values = {c: int(c in seen) for c in _VINDR_COLUMNS}
            values["No finding"] = int(not seen)
            rows.append({"image_id": image_id, "rad_id": f"R{reader + 1}",
                         **values})
    files: dict[str, str | bytes] = {"annotations/image_labels_train.csv": _csv(pd.DataFrame(rows))}
    encodings = _dicom_encodings(len(frame), rng)
    headers = [{"Modality": "DX", "ViewPosition": view, "PatientSex": sex,
                "PatientAge": f"{min(age, 99):03d}Y"}
               for view, sex, age in zip(frame["view_position"], frame["sex"], frame["age"],
                                         strict=True)]
    return [(f"train/{i}.dicom", e, h) for i, e, h in zip(ids, encodings, headers, strict=True)], files


def _rsna(frame: pd.DataFrame, rng: np.random.Generator) -> LayoutPlan:
    ids = [f"{rng.integers(16**8):08x}-{i:04x}-4{rng.integers(16**3):03x}-a{i % 4096:03x}-"
           f"{rng.integers(16**12):012x}" for i in range(len(frame))]
    target = ((frame["Pneumonia"] == 1) | (frame["Consolidation"] == 1)).to_numpy()
    rows: list[dict[str, object]] = []
    for image_id, positive in zip(ids, target, strict=True):
        if not positive:
            rows.append({"patientId": image_id, "x": None, "y": None, "width": None,
                         "height": None, "Target": 0})
            continue
        for _ in range(int(rng.integers(1, 3))):
            rows.append({"patientId": image_id, "x": float(rng.integers(100, 600)),
                         "y": float(rng.integers(100, 500)), "width": float(rng.integers(80, 300)),
                         "height": float(rng.integers(80, 400)), "Target": 1})
    files: dict[str, str | bytes] = {"stage_2_train_labels.csv": _csv(pd.DataFrame(rows))}
    encodings = _dicom_encodings(len(frame), rng)
    headers = [{"PatientID": i, "Modality": "CR", "ViewPosition": view, "PatientSex": sex,
                "PatientAge": str(min(age, 99))}  # RSNA's ages are bare numbers
               for i, view, sex, age in zip(ids, frame["view_position"], frame["sex"],
                                            frame["age"], strict=True)]
    return [(f"stage_2_train_images/{i}.dcm", e, h)
            for i, e, h in zip(ids, encodings, headers, strict=True)], files


def _dicom_export(frame: pd.DataFrame, rng: np.random.Generator) -> LayoutPlan:
    """A PACS export: nested folders, no suffixes, every identifier in the headers, a few
    objects that are not radiographs, and report labels per accession number."""
    root_uid = f"1.2.826.0.1.3680043.10.1418.7.{int(rng.integers(10**6))}"
    study_number = frame["follow_up"].to_numpy() // 2  # two images to a study, about
    placed: list[Placed] = []
    reports: dict[str, dict[str, str | int]] = {}
    not_radiograph = np.arange(len(frame)) % 40 == 20  # one object in 40: a CT slice, a capture
    for k, (row, other) in enumerate(zip(frame.itertuples(), not_radiograph, strict=True)):
        patient, study = f"PAT{row.patient_id:06d}", f"{row.patient_id}.{study_number[k]}"
        accession = f"ACC{row.patient_id:06d}{study_number[k]:03d}"
        header = {"PatientID": patient, "StudyInstanceUID": f"{root_uid}.1.{study}",
                  "SOPInstanceUID": f"{root_uid}.2.{k}", "AccessionNumber": accession,
                  "Modality": ("CT", "OT")[k // 40 % 2] if other else "DX",
                  "ViewPosition": row.view_position, "PatientSex": row.sex,
                  "PatientAge": f"{min(row.age, 99):03d}Y"}
        placed.append((f"DICOM/{patient}/{study_number[k]:03d}/IM{k:05d}", DICOM_ENCODING, header))
        positives = reports.setdefault(accession, {"AccessionNumber": accession})
        for name in LABELS:  # a report speaks of its study: positive if any image shows it
            positives[name] = max(int(positives.get(name, 0)), int(getattr(row, name)))
    files: dict[str, str | bytes] = {"reports.csv": _csv(pd.DataFrame(list(reports.values())))}
    return placed, files


PLANS: dict[str, Callable[[pd.DataFrame, np.random.Generator], LayoutPlan]] = {
    "chexpert": _chexpert, "mimic-cxr-jpg": _mimic, "padchest": _padchest, "vindr-cxr": _vindr,
    "rsna-pneumonia": _rsna, "dicom-export": _dicom_export}


def plan_layout(layout: str, frame: pd.DataFrame, seed: int = 0) -> LayoutPlan:
    """Where each row of a synthetic metadata frame goes in ``layout``, how it is encoded,
    and the archive's label files."""
    return PLANS[layout](frame, np.random.default_rng([seed, 11]))


__all__ = ["DICOM_SYNTAXES", "LAYOUTS", "Layout", "copy_encoding", "encode_dicom", "encode_image",
           "encode_jpeg_dicom", "plan_layout"]
