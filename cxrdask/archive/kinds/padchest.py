"""PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` and 16-bit PNGs.

``Labels`` is a Python-list string of lower-case Spanish-report terms
(``"['pleural effusion', 'cardiomegaly']"``, ``"['normal']"``). Findings follow
torchxrayvision's ``PC_Dataset`` exactly, so counts agree with it: its 28 findings, each
positive where its lower-case name, or one of its synonyms, occurs in the string (a name
ending in ``'`` must end a term: ``Tube'`` is any term ending in "tube"). A row without
``Labels`` has every finding missing. Images are ``<ImageDir>/<ImageID>`` (or flat).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.findings import harmonise
from cxrdask.archive.kinds.table import archive_table, read_csv, sex_codes

CSV_PREFIX = "PADCHEST_chest_x_ray_images_labels_160K"
HEADER = ("ImageID", "ImageDir", "PatientID", "Labels")
FINDINGS = ("Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
            "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule",
            "Mass", "Hernia", "Fracture", "Granuloma", "Flattened Diaphragm", "Bronchiectasis",
            "Aortic Elongation", "Scoliosis", "Hilar Enlargement", "Tuberculosis", "Air Trapping",
            "Costophrenic Angle Blunting", "Aortic Atheromatosis", "Hemidiaphragm Elevation",
            "Support Devices", "Tube'")
SYNONYMS = {
    "Infiltration": ("infiltrates", "interstitial pattern", "ground glass pattern",
                     "reticular interstitial pattern", "reticulonodular interstitial pattern",
                     "alveolar pattern", "consolidation", "air bronchogram"),
    "Pleural_Thickening": ("pleural thickening",),
    "Consolidation": ("air bronchogram",),
    "Hilar Enlargement": ("adenopathy", "pulmonary artery enlargement"),
    "Support Devices": ("device", "pacemaker"),
    "Tube'": ("stent'",),
}


def padchest_labels(terms: pd.Series) -> dict[str, np.ndarray]:
    """The 28 findings of each row's ``Labels`` string (torchxrayvision's rule); NaN where
    the row has no ``Labels``."""
    text = terms.fillna("")
    known = terms.notna().to_numpy()
    labels = {}
    for name in FINDINGS:
        hit = text.str.contains(name.lower(), regex=False)
        for synonym in SYNONYMS.get(name, ()):
            hit |= text.str.contains(synonym.lower(), regex=False)
        values = hit.to_numpy().astype(np.float32)
        values[~known] = np.nan
        labels[harmonise(name.rstrip("'"))] = values
    return labels


def read_padchest(url: str, storage_options: StorageOptions | None) -> pd.DataFrame:
    """PadChest's label CSV as the canonical table (age = study year - birth year)."""
    frame = read_csv(url, storage_options, required=HEADER, index_col=False)
    directory = frame["ImageDir"].fillna("").str.replace(r"\.0$", "", regex=True)
    study_year = pd.to_numeric(frame.get("StudyDate_DICOM", pd.Series(index=frame.index,
                                                                      dtype=str)).str[:4],
                               errors="coerce")
    birth = pd.to_numeric(frame.get("PatientBirth"), errors="coerce")
    view = frame.get("Projection", pd.Series("", index=frame.index)).fillna("")
    view = view.replace({"AP_horizontal": "AP Supine"})
    columns = {"image_index": frame["ImageID"], "path": directory + "/" + frame["ImageID"],
               "patient": frame["PatientID"], "study": frame.get("StudyID", ""),
               "age": (study_year - birth).fillna(-1), "view_position": view,
               "sex": sex_codes(frame.get("PatientSex_DICOM", pd.Series("", index=frame.index))),
               "label_method": frame.get("MethodLabel", pd.Series("", index=frame.index)).fillna("")}
    return archive_table("padchest", url, columns, padchest_labels(frame["Labels"]))


__all__ = ["CSV_PREFIX", "FINDINGS", "HEADER", "SYNONYMS", "padchest_labels", "read_padchest"]
