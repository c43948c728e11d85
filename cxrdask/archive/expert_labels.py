"""Google's 2019 expert labels of NIH images, and the head scored against them.

Majkowska et al., "Chest radiograph interpretation with deep learning models: assessment
with radiologist-adjudicated reference standards and population-adjusted evaluation",
Radiology 294(2), 2020, relabelled 4,376 NIH images by adjudicated radiologist review and
published the labels as ``google2019_nih-chest-xray-labels.csv`` (often gzipped): the 11
metadata columns of NIH's 2020 CSV (``OriginalImage[Width,Height]`` and
``OriginalImagePixelSpacing[x,y]`` each split into two by their comma), then
``Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id`` with ``YES``/``NO`` and
``test``/``val``; CRLF line ends and no line end after the last line. ``validation`` (what
cxrdask's synthetic archives wrote before they followed the published file) reads as ``val``.

Three of the four findings map onto NIH's labels, and the head's score for a finding is the
highest probability among the NIH diseases it maps to:

- **Pneumothorax**: NIH's Pneumothorax.
- **Nodule or mass**: the higher of Nodule and Mass (the expert label merges them).
- **Airspace opacity**: the highest of Consolidation, Pneumonia and Infiltration: the NIH
  findings that describe filling of the airspaces. Edema is left out (NIH's edema labels
  are mostly interstitial patterns) and so is Atelectasis (volume loss, whose opacity the
  relabelling did not count as airspace disease); this is our choice, stated so a reader can
  redo it with another.
- **Fracture** has no NIH label and is not scored.

Each mapped finding is scored twice on the same images, against the expert label and
against NIH's original (text-mined) label, so the difference the reference makes shows.
"""

from __future__ import annotations

import fsspec
import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.archive.labels import LABEL_POSITION
from cxrdask.errors import MetadataError, MissingColumnError, RowProblem

FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
SET_COLUMN = "Set Id"
SETS = ("test", "val")  # as published
SET_ALIASES = {"validation": "val"}
EXPERT_TO_NIH: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": ("Consolidation", "Pneumonia", "Infiltration"),
}
FIRST_DATA_LINE = 2


def read_expert_labels(url: str, storage_options: StorageOptions | None = None) -> pd.DataFrame:
    """The expert labels: ``image_index``, ``set_id`` and one boolean column per finding.

    Raises
    ------
    MissingColumnError
        ``Image Index``, a finding or ``Set Id`` is absent.
    MetadataError
        A value is not ``YES``/``NO`` (or ``test``/``val``), or an image is listed
        twice; every bad row is named by its line.
    """
    with fsspec.open(url, "rb", compression="infer", **(storage_options or {})) as handle:
        raw = pd.read_csv(handle, dtype=str, keep_default_na=False, index_col=False)
    raw.columns = [str(c).strip() for c in raw.columns]
    needed = ["Image Index", *FINDINGS, SET_COLUMN]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise MissingColumnError(url, message=(
            f"{url}: not Google's 2019 expert-label file: column(s) {', '.join(map(repr, missing))} "
            f"missing (columns found: {', '.join(map(repr, raw.columns))})"))
    problems: list[RowProblem] = []
    index = raw["Image Index"].str.strip()
    out = {"image_index": index}
    for column in FINDINGS:
        values = raw[column].str.strip().str.upper()
        bad = ~values.isin(["YES", "NO"])
        problems += [RowProblem(FIRST_DATA_LINE + i, index.iat[i], column, raw[column].iat[i],
                                "expected YES or NO") for i in np.flatnonzero(bad)]
        out[column] = values == "YES"
    sets = raw[SET_COLUMN].str.strip().str.lower().replace(SET_ALIASES)
    problems += [RowProblem(FIRST_DATA_LINE + i, index.iat[i], SET_COLUMN, raw[SET_COLUMN].iat[i],
                            "expected test or val")
                 for i in np.flatnonzero(~sets.isin(SETS))]
    out["set_id"] = sets
    for i in np.flatnonzero(index.duplicated().to_numpy()):
        problems.append(RowProblem(FIRST_DATA_LINE + i, index.iat[i], "Image Index", index.iat[i],
                                   "image listed twice"))
    if problems:
        raise MetadataError(url, sorted(problems, key=lambda p: p.line))
    return pd.DataFrame(out)


def nih_composite(matrix: np.ndarray, finding: str) -> np.ndarray:
    """The NIH columns an expert finding maps to, combined by their maximum."""
    columns = [LABEL_POSITION[name] for name in EXPERT_TO_NIH[finding]]
    return matrix[:, columns].max(axis=1)


__all__ = ["EXPERT_TO_NIH", "FINDINGS", "nih_composite", "read_expert_labels"]
