"""A private archive: any images (``csv``) or DICOM files (``dicom``) listed in a manifest.

``manifest.csv`` at the archive's root: a ``path`` column (the image under the root) and any
of ``image_id``, ``patient_id``, ``study_id``, ``view``, ``sex``, ``age``, ``split``
(train/validation/test); every other column is a finding, valued ``1``, ``0``, ``-1``
(uncertain) or blank (not mentioned), named as the archive names it (harmonised to the
anchor vocabulary where a name matches: ``Pleural Effusion`` becomes ``Effusion``).

A manifest of DICOM files need not give patients, studies, views, sexes or ages: what it
leaves out is read from the files' headers (``PatientID``, ``StudyInstanceUID``,
``ViewPosition``, ``PatientSex``, ``PatientAge``; :mod:`cxrdask.archive.dicom_headers`), so
a patient split stays a patient split.
"""

from __future__ import annotations

import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.dicom_files import DICOM_SUFFIXES
from cxrdask.archive.findings import UncertainPolicy, apply_uncertain, harmonised_labels
from cxrdask.archive.kinds.table import archive_table, label_values, read_csv, sex_codes

MANIFEST_NAME = "manifest.csv"
HEADER_FILLED = ("patient", "study", "view_position", "sex", "age")  # from DICOM headers
_COLUMNS = {"image_id": "image_index", "patient_id": "patient", "study_id": "study",
            "view": "view_position", "sex": "sex", "age": "age", "split": "official_split"}


def manifest_kind(paths: pd.Series) -> str:
    """``dicom`` when every listed file is a DICOM file by its name, else ``csv``."""
    return "dicom" if paths.str.lower().str.endswith(DICOM_SUFFIXES).all() else "csv"


def read_manifest(url: str, uncertain: UncertainPolicy,
                  storage_options: StorageOptions | None) -> pd.DataFrame:
    """A manifest as the canonical table; no ``image_id``: the path is the identity; no
    ``patient_id``: each image is its own patient (say so in a report)."""
    frame = read_csv(url, storage_options, required=("path",))
    columns: dict[str, object] = {"path": frame["path"]}
    for name, canonical in _COLUMNS.items():
        if name in frame:
            columns[canonical] = frame[name].fillna("")
    kind = manifest_kind(frame["path"])
    from_headers = tuple(c for c in HEADER_FILLED if c not in columns) if kind == "dicom" else ()
    columns.setdefault("image_index", frame["path"])
    columns.setdefault("patient", columns["image_index"])
    if "sex" in columns:
        columns["sex"] = sex_codes(frame["sex"])
    findings = [c for c in frame.columns if c != "path" and c not in _COLUMNS]
    labels = harmonised_labels({name: apply_uncertain(label_values(frame[name], url), uncertain)
                                for name in findings})
    return archive_table(kind, url, columns, labels, from_headers)


__all__ = ["DICOM_SUFFIXES", "HEADER_FILLED", "MANIFEST_NAME", "manifest_kind", "read_manifest"]
