"""CheXpert v1.0 and v1.0-small, and MIMIC-CXR-JPG (whose labels are CheXpert's labeller's).

CheXpert: ``train.csv`` and ``valid.csv``, one row per image, ``Path`` such as
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``. Labels are ``1.0``
positive, ``0.0`` negative, ``-1.0`` uncertain, blank not mentioned. As torchxrayvision's
``CheX_Dataset`` does, ``No Finding`` = 1 sets every finding but ``Support Devices`` to 0;
then uncertain labels follow the policy (missing, as torchxrayvision). ``valid.csv`` (the
radiologist-labelled studies) is the official test set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import UncertainPolicy, apply_uncertain, harmonise
from cxrdask.archive.kinds.table import (
    archive_table,
    check_known_columns,
    label_values,
    read_csv,
    sex_codes,
)

FINDINGS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
            "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
            "Pleural Other", "Fracture", "Support Devices")
NO_FINDING = "No Finding"
CSV_NAMES = ("train.csv", "valid.csv")
HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


def chexpert_labels(frame: pd.DataFrame, url: str, uncertain: UncertainPolicy,
                    spare: tuple[str, ...] = ("Support Devices",)) -> dict[str, np.ndarray]:
    """The 13 findings by harmonised name: ``No Finding`` = 1 zeroes every finding but those in
    ``spare``, then ``-1`` follows the uncertain policy and blank stays missing."""
    healthy = (label_values(frame[NO_FINDING], url) == 1) if NO_FINDING in frame else None
    labels = {}
    for name in FINDINGS:
        values = (label_values(frame[name], url) if name in frame
                  else np.full(len(frame), np.nan, dtype=np.float32))
        if healthy is not None and name not in spare:
            values[healthy] = 0.0
        labels[harmonise(name)] = apply_uncertain(values, uncertain)
    return labels


def read_chexpert(csv_urls: list[str], uncertain: UncertainPolicy,
                  storage_options: StorageOptions | None) -> pd.DataFrame:
    """CheXpert's ``train.csv`` and/or ``valid.csv`` as the canonical table."""
    frames, found = [], []
    for url in csv_urls:
        frame = read_csv(url, storage_options, required=(*HEADER, *FINDINGS))
        check_known_columns(frame, url, (*HEADER, NO_FINDING, *FINDINGS), "CheXpert")
        frame["official_split"] = "test" if url.rstrip("/").endswith("valid.csv") else "trainval"
        frame["csv_line"] = np.arange(2, 2 + len(frame))
        frames.append(frame)
        found.append(chexpert_labels(frame, url, uncertain))
    labels = {name: np.concatenate([part[name] for part in found]) for name in found[0]}
    frame = pd.concat(frames, ignore_index=True)
    # "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg": the images sit under
    # the folder holding the CSVs, so the first part of the path is dropped (torchxrayvision too).
    path = frame["Path"].str.replace(r"^CheXpert-v1\.0(?:-small)?/", "", regex=True)
    parts_of_path = path.str.extract(r"(patient\d+)/(study\d+)/")
    frontal = frame["Frontal/Lateral"].fillna("").str.lower().eq("frontal")
    view = np.where(frontal, frame["AP/PA"].fillna(""), "LATERAL")
    return archive_table(
        "chexpert", csv_urls[0],
        {"image_index": path, "path": path,
         "patient": parts_of_path[0].str.replace("patient", "").fillna(path),
         "study": parts_of_path[0] + "/" + parts_of_path[1], "age": frame["Age"],
         "sex": sex_codes(frame["Sex"]), "view_position": view,
         "official_split": frame["official_split"], "csv_line": frame["csv_line"]},
        labels)


MIMIC_LABELS = ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-negbio.csv")
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
_MIMIC_SPLITS = {"train": "train", "validate": "validation", "test": "test"}


def read_mimic(metadata_url: str, labels_url: str, split_url: str | None,
               uncertain: UncertainPolicy, storage_options: StorageOptions | None) -> pd.DataFrame:
    """MIMIC-CXR-JPG: one row per image of the metadata file, labels per study from the
    CheXpert (or NegBio) file, the official split per image where the split file is there.

    As torchxrayvision's ``MIMIC_Dataset`` does, ``No Finding`` = 1 zeroes all 13 findings,
    ``Support Devices`` included (its ``CheX_Dataset`` spares that one).
    """
    meta = read_csv(metadata_url, storage_options,
                    required=("dicom_id", "subject_id", "study_id", "ViewPosition"))
    labels = read_csv(labels_url, storage_options, required=("subject_id", "study_id"))
    check_known_columns(labels, labels_url, ("subject_id", "study_id", NO_FINDING, *FINDINGS),
                        "MIMIC-CXR-JPG's label file")
    keys = ["subject_id", "study_id"]
    joined = meta.merge(labels.drop_duplicates(keys), on=keys, how="left", validate="many_to_one")
    joined["csv_line"] = np.arange(2, 2 + len(joined))
    found = chexpert_labels(joined, labels_url, uncertain, spare=())
    split = None
    if split_url is not None:
        splits = read_csv(split_url, storage_options, required=("dicom_id", "split"))
        split = (joined["dicom_id"].map(splits.set_index("dicom_id")["split"])
                 .map(_MIMIC_SPLITS).fillna(""))
    subject = joined["subject_id"].astype(str)
    path = ("files/p" + subject.str[:2] + "/p" + subject + "/s" + joined["study_id"].astype(str)
            + "/" + joined["dicom_id"] + ".jpg")
    columns = {"image_index": joined["dicom_id"], "path": path, "patient": subject,
               "study": joined["study_id"], "view_position": joined["ViewPosition"].fillna(""),
               "csv_line": joined["csv_line"]}
    if split is not None:
        columns["official_split"] = split
    return archive_table("mimic-cxr-jpg", metadata_url, columns, found)


__all__ = ["CSV_NAMES", "FINDINGS", "HEADER", "MIMIC_LABELS", "MIMIC_METADATA", "MIMIC_SPLIT",
           "NO_FINDING", "chexpert_labels", "read_chexpert", "read_mimic"]
