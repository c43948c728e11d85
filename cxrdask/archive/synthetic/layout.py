"""The synthetic archive's metadata: NIH-like labels, patients and demographics, the three real
CSV variants, and the official split lists.

Label frequencies and co-occurrence follow NIH ChestX-ray14's counts; several images per
patient (about 3.6), a few impossible ages and mismatched follow-up numbers, as in the real
file. Everything is deterministic for a seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdask.archive.kinds.nih import CSV_NAMES
from cxrdask.archive.labels import LABELS, format_labels
from cxrdask.choices import CsvVariant, Prevalence
from cxrdask.errors import OptionError

# NIH ChestX-ray14 counts (of 112,120 images) that the label sampler reproduces.
NIH_IMAGES = 112_120
NIH_NO_FINDING = 60_361
NIH_COUNTS = {
    "Atelectasis": 11_559, "Cardiomegaly": 2_776, "Effusion": 13_317, "Infiltration": 19_894,
    "Mass": 5_782, "Nodule": 6_331, "Pneumonia": 1_431, "Pneumothorax": 5_302,
    "Consolidation": 4_667, "Edema": 2_303, "Emphysema": 2_516, "Fibrosis": 1_686,
    "Pleural_Thickening": 3_385, "Hernia": 227,
}
NIH_PATIENTS = 30_805


def _label_probabilities(prevalence: Prevalence) -> tuple[float, np.ndarray]:
    """P(any finding) and per-disease Bernoulli probabilities given a finding.

    Diseases are drawn independently and empty draws are redrawn, which keeps the
    marginals proportional to the NIH counts while producing NIH-like co-occurrence; the
    scale is solved so that an abnormal image carries 1.57 labels on average, as in NIH.
    """
    abnormal = NIH_IMAGES - NIH_NO_FINDING
    counts = np.array([NIH_COUNTS[name] for name in LABELS], dtype=np.float64)
    if prevalence == "balanced":
        counts = np.full(len(LABELS), counts.mean())
        finding_rate = 0.75
    elif prevalence == "nih":
        finding_rate = abnormal / NIH_IMAGES
    else:
        raise OptionError(f"prevalence must be 'nih' or 'balanced', not {prevalence!r}")
    share = counts / abnormal
    target = counts.sum() / abnormal  # mean labels per abnormal image (1.57)

    def mean_labels(scale: float) -> float:
        p = np.minimum(share * scale, 0.999)
        return p.sum() / (1.0 - np.prod(1.0 - p))

    low, high = 1e-3, 1.0 / share.max()
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if mean_labels(middle) < target else (low, middle)
    return finding_rate, np.minimum(share * low, 0.999)


def sample_labels(n: int, rng: np.random.Generator, prevalence: Prevalence = "nih") -> np.ndarray:
    """An ``(n, 14)`` uint8 multi-hot matrix with NIH-like prevalence and co-occurrence."""
    finding_rate, p = _label_probabilities(prevalence)
    matrix = np.zeros((n, len(LABELS)), dtype=np.uint8)
    abnormal = np.flatnonzero(rng.random(n) < finding_rate)
    todo = abnormal
    while len(todo):
        draws = (rng.random((len(todo), len(LABELS))) < p).astype(np.uint8)
        matrix[todo] = draws
        todo = todo[draws.sum(axis=1) == 0]
    return matrix


def make_metadata(n: int, seed: int = 0, prevalence: Prevalence = "nih") -> pd.DataFrame:
    """Rows of a synthetic ``Data_Entry_2017.csv`` in canonical columns (see metadata.py).

    Several images per patient (about 3.6 on average, as in NIH), a few ages above 123,
    and a few follow-up numbers that do not match the file name, as in the real file.
    """
    rng = np.random.default_rng([seed, 1])
    per_patient: list[int] = []
    while sum(per_patient) < n:
        per_patient.append(int(min(rng.geometric(NIH_PATIENTS / NIH_IMAGES), 40)))
    per_patient[-1] -= sum(per_patient) - n
    patient = np.repeat(np.arange(1, len(per_patient) + 1), per_patient)
    follow_up = np.concatenate([np.arange(k) for k in per_patient])
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(patient, follow_up, strict=True)]

    base_age = np.clip(rng.normal(47, 17, len(per_patient)), 1, 92).astype(int)
    age = base_age[patient - 1] + (follow_up // 8)
    impossible = max(1, round(n * 2e-4)) if n >= 100 else 0
    age[rng.choice(n, impossible, replace=False)] = rng.integers(124, 415, impossible)
    sex = np.where(rng.random(len(per_patient)) < 0.565, "M", "F")[patient - 1]
    view = np.where(rng.random(n) < 0.6, "PA", "AP")
    labels = sample_labels(n, rng, prevalence)
    # The real file's Follow-up # does not always match the file name: keep a few so.
    recorded_follow_up = follow_up.copy()
    odd = rng.random(n) < 0.01
    recorded_follow_up[odd] += rng.integers(1, 3, odd.sum())

    frame = pd.DataFrame(
        {
            "image_index": names,
            "finding_labels": [format_labels(row) for row in labels],
            "follow_up": recorded_follow_up,
            "patient_id": patient,
            "age": age,
            "sex": sex,
            "view_position": view,
            "original_width": rng.choice([2500, 2544, 2682, 2992, 3056], n),
            "original_height": rng.choice([2048, 2544, 2749, 2991, 3056], n),
            "pixel_spacing_x": np.where(rng.random(n) < 0.9, 0.143, 0.139),
        }
    )
    frame["pixel_spacing_y"] = frame["pixel_spacing_x"]
    for position, name in enumerate(LABELS):
        frame[name] = labels[:, position]
    return frame


def _sample_age_string(age: int, rng: np.random.Generator) -> str:
    """Kaggle sample_labels ages: ``058Y``, and months or days for infants."""
    if age == 0:
        return f"{int(rng.integers(1, 28)):03d}D"
    if age == 1 and rng.random() < 0.5:
        return f"{int(rng.integers(12, 24)):03d}M"
    return f"{age:03d}Y"


def format_csv(frame: pd.DataFrame, variant: CsvVariant = "kaggle2017", seed: int = 0) -> str:
    """The CSV text of ``frame`` in one of the three real NIH variants (:data:`CSV_NAMES`)."""
    size_cols = ["original_width", "original_height", "pixel_spacing_x", "pixel_spacing_y"]
    ages = frame["age"].to_numpy()
    if variant == "sample_labels":
        rng = np.random.default_rng([seed, 2])
        age_text = [_sample_age_string(int(a), rng) for a in ages]
        size_names = ["OriginalImageWidth", "OriginalImageHeight",
                      "OriginalImagePixelSpacing_x", "OriginalImagePixelSpacing_y"]
    elif variant in ("kaggle2017", "v2020"):
        if variant == "v2020":  # NIH corrected the impossible ages in 2020
            ages = np.where(ages > 123, ages % 100, ages)
        age_text = [str(int(a)) for a in ages]
        size_names = ["OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    else:
        raise OptionError(f"unknown CSV variant {variant!r}; use {', '.join(CSV_NAMES)}")
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
              "Patient Gender", "View Position", *size_names]
    columns = [frame["image_index"], frame["finding_labels"], frame["follow_up"],
               frame["patient_id"], age_text, frame["sex"], frame["view_position"],
               *(frame[c] for c in size_cols)]
    trailer = "," if variant == "kaggle2017" else ""
    lines = [",".join(header) + trailer]
    for row in zip(*columns, strict=True):
        lines.append(",".join(str(v) for v in row) + trailer)
    return "\n".join(lines) + "\n"


def official_lists(frame: pd.DataFrame, seed: int = 0, test_share: float = 0.228):
    """``train_val_list.txt`` and ``test_list.txt`` contents: a split by patient, like NIH's."""
    patients = np.unique(frame["patient_id"])
    rng = np.random.default_rng([seed, 3])
    test_patients = set(rng.choice(patients, round(len(patients) * test_share), replace=False))
    is_test = frame["patient_id"].isin(test_patients).to_numpy()
    names = frame["image_index"].to_numpy()
    return sorted(names[~is_test]), sorted(names[is_test])


__all__ = ["CSV_NAMES", "NIH_COUNTS", "CsvVariant", "Prevalence", "format_csv", "make_metadata",
           "official_lists", "sample_labels"]
