"""VinDr-CXR (PhysioNet 1.0.0 and Kaggle's VinBigData copy) and RSNA Pneumonia (stage 2).

VinDr-CXR: each image was read by several radiologists, one row per radiologist. PhysioNet's
``annotations/image_labels_{train,test}.csv`` hold 0/1 per label; Kaggle's ``train.csv``
holds one row per box (``class_name``; ``No finding`` with an empty box). A finding is
positive when any radiologist marked it, as torchxrayvision's ``VinDr_Dataset`` reads
Kaggle's file. Images are ``train/<image_id>.dicom`` (``test/`` too on PhysioNet). The
archives publish no patient id: each image is its own patient.

Neither label file gives view, sex or age; each image's DICOM header does, and they are read
from there (:mod:`cxrdask.archive.dicom_headers`), as torchxrayvision reads RSNA's from a CSV
of its DICOM headers.

RSNA Pneumonia: ``stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``, one row
per box); ``Pneumonia`` and ``Lung Opacity`` are ``Target``, as torchxrayvision's
``RSNA_Pneumonia_Dataset`` has them. Images ``stage_2_train_images/<patientId>.dcm``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import harmonised_labels
from cxrdask.archive.kinds.table import archive_table, check_known_columns, read_csv

NO_FINDING = "No finding"
PHYSIONET_LABELS = ("annotations/image_labels_train.csv", "annotations/image_labels_test.csv")
KAGGLE_LABELS = "train.csv"
KAGGLE_HEADER = ("image_id", "class_name", "rad_id")
# The 14 local findings of Kaggle's file (class_id 0-13), each a column even where no box has it.
KAGGLE_CLASSES = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly",
                  "Consolidation", "ILD", "Infiltration", "Lung Opacity", "Nodule/Mass",
                  "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
                  "Pulmonary fibrosis")
RSNA_LABELS = "stage_2_train_labels.csv"
RSNA_HEADER = ("patientId", "Target")
RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
KAGGLE_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max",
                  "y_max")
# What the label files do not say and each DICOM header does (both archives kept view, sex
# and age in their headers; neither publishes a patient id beyond the image's own).
FROM_HEADERS = ("view_position", "sex", "age")
_NOT_FINDINGS = {"image_id", "rad_id", NO_FINDING.lower()}
# Columns of a box file (Kaggle's layout), which a 0/1 label file never has.
_BOX_COLUMNS = {"class_name", "class_id", "x_min", "y_min", "x_max", "y_max"}


def read_vindr_physionet(urls: list[str], storage_options: StorageOptions | None) -> pd.DataFrame:
    """PhysioNet's per-radiologist 0/1 label files: a label is positive if any reader said so.

    Every column but ``image_id``, ``rad_id`` and ``No finding`` is a finding, and must hold
    0, 1 or nothing: a box file's columns (Kaggle's layout, read by
    :func:`read_vindr_kaggle`) or any column of other values is refused by name, never
    turned into a finding."""
    frames = []
    for url in urls:
        frame = read_csv(url, storage_options, required=("image_id", "rad_id"))
        names = [c for c in frame.columns if c.lower() not in _NOT_FINDINGS]
        _check_label_columns(frame, names, url)
        values = frame[names].apply(pd.to_numeric, errors="coerce").fillna(0)
        values["image_id"] = frame["image_id"]
        merged = values.groupby("image_id", sort=False).max()
        merged["official_split"] = "test" if "_test" in url else "trainval"
        merged["folder"] = "test" if "_test" in url else "train"
        frames.append(merged)
    merged = pd.concat(frames).fillna(0)
    ids = merged.index.to_series()
    labels = harmonised_labels({name: merged[name].to_numpy(dtype=np.float32) for name in merged.columns
                          if name not in ("official_split", "folder")})
    return archive_table("vindr-cxr", urls[0],
                         {"image_index": ids, "path": merged["folder"] + "/" + ids + ".dicom",
                          "patient": ids, "official_split": merged["official_split"]}, labels,
                         from_headers=FROM_HEADERS)


def _check_label_columns(frame: pd.DataFrame, names: list[str], url: str) -> None:
    """Refuse a PhysioNet label file whose would-be finding columns are not 0/1 labels."""
    from cxrdask.errors import MetadataError

    boxes = sorted(_BOX_COLUMNS & set(names))
    if boxes:
        raise MetadataError(url, message=(
            f"{url}: columns {', '.join(boxes)} are a box file's (VinBigData's Kaggle train.csv "
            f"has them), not PhysioNet's 0/1 labels; its header needs {', '.join(KAGGLE_HEADER)} "
            "to be read as boxes"))
    for name in names:
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = frame[name].notna() & ~values.isin([0, 1])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise MetadataError(url, message=(
                f"{url}: line {row + 2}, column {name!r}: {frame[name].iloc[row]!r} is not a 0/1 "
                "label; VinDr-CXR's PhysioNet label files hold 0 or 1 in every finding column"))


def read_vindr_kaggle(url: str, storage_options: StorageOptions | None) -> pd.DataFrame:
    """Kaggle's one-row-per-box ``train.csv``: the set of classes any radiologist named."""
    frame = read_csv(url, storage_options, required=KAGGLE_HEADER)
    check_known_columns(frame, url, KAGGLE_COLUMNS, "VinBigData's Kaggle train.csv")
    named = frame.groupby("image_id", sort=True)["class_name"].agg(lambda x: set(x.dropna()))
    classes = sorted({*KAGGLE_CLASSES, *(c for cs in named for c in cs if c != NO_FINDING)})
    labels = harmonised_labels({c: np.fromiter((c in cs for cs in named), dtype=np.float32,
                                         count=len(named)) for c in classes})
    ids = named.index.to_series()
    return archive_table("vindr-cxr", url, {"image_index": ids, "path": "train/" + ids + ".dicom",
                                            "patient": ids}, labels, from_headers=FROM_HEADERS)


def read_rsna(url: str, storage_options: StorageOptions | None) -> pd.DataFrame:
    """RSNA Pneumonia's box file as one row per image: Pneumonia = Lung Opacity = Target."""
    frame = read_csv(url, storage_options, required=RSNA_HEADER)
    check_known_columns(frame, url, RSNA_COLUMNS, "RSNA Pneumonia's stage_2_train_labels.csv")
    target = pd.to_numeric(frame["Target"], errors="coerce")
    per_image = target.groupby(frame["patientId"], sort=False).max()
    values = per_image.to_numpy(dtype=np.float32)
    ids = per_image.index.to_series()
    return archive_table("rsna-pneumonia", url,
                         {"image_index": ids, "path": "stage_2_train_images/" + ids + ".dcm",
                          "patient": ids},
                         {"Pneumonia": values, "Lung Opacity": values.copy()},
                         from_headers=FROM_HEADERS)


__all__ = ["KAGGLE_CLASSES", "KAGGLE_HEADER", "KAGGLE_LABELS", "NO_FINDING", "PHYSIONET_LABELS",
           "RSNA_HEADER", "RSNA_LABELS", "read_rsna", "read_vindr_kaggle", "read_vindr_physionet"]
