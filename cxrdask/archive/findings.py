"""One vocabulary of findings across archives, and labels that can be missing.

Every archive names its findings its own way (CheXpert's ``Pleural Effusion``, NIH's
``Effusion``, PadChest's lower-case ``pleural effusion``, VinDr's ``Pleural effusion``).
torchxrayvision's 18 ``default_pathologies`` are the field's anchor; each archive's findings
are renamed to those names where one exists, and keep their own name otherwise, so a head
trained on one archive can be scored on another for the findings both share.

A label is positive (1), negative (0) or missing (not mentioned, or uncertain under the
``missing`` policy). In a store it is a ``uint8`` with :data:`MISSING` for missing; in a
metadata frame a float32 with NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from cxrdask.choices import UNCERTAIN_POLICIES, UncertainPolicy
from cxrdask.errors import OptionError

if TYPE_CHECKING:  # a worker writing chunks reads MISSING from here and never needs pandas
    import pandas as pd

MISSING = 255  # a missing label in a store's uint8 ``labels`` array

# torchxrayvision's ``datasets.default_pathologies``, in its order (the anchor vocabulary).
DEFAULT_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass",
    "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

# An archive's own name -> the anchor's (case-insensitive; names not here keep their own).
_SYNONYMS = {
    "pleural effusion": "Effusion",
    "pleural thickening": "Pleural_Thickening",
    "pleural_thickening": "Pleural_Thickening",
    "infiltrate": "Infiltration",
    "pulmonary fibrosis": "Fibrosis",
}
_ANCHOR = {name.lower(): name for name in DEFAULT_PATHOLOGIES}


def harmonise(name: str) -> str:
    """The anchor name of an archive's finding (``Pleural Effusion`` -> ``Effusion``), or the
    archive's own name, trimmed, when the anchor has none (``Support Devices``)."""
    key = name.strip().lower()
    return _SYNONYMS.get(key) or _ANCHOR.get(key) or name.strip()


def harmonised_labels(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An archive's label columns under the anchor's names; two of its names that land on
    one (VinDr's ``Pleural effusion`` and an ``Effusion``) are OR-ed, missing where both are."""
    out: dict[str, np.ndarray] = {}
    for name, values in labels.items():
        key = harmonise(name)
        out[key] = np.fmax(out[key], values) if key in out else values
    return out


def ordered_findings(names: Iterable[str]) -> list[str]:
    """Findings in one order for every archive: the anchor's first, then the others sorted."""
    names = list(dict.fromkeys(names))
    anchored = [n for n in DEFAULT_PATHOLOGIES if n in names]
    return anchored + sorted(n for n in names if n not in DEFAULT_PATHOLOGIES)


def check_uncertain(policy: UncertainPolicy) -> UncertainPolicy:
    """``policy`` if it is one of :data:`UNCERTAIN_POLICIES`, else an :class:`OptionError`."""
    if policy not in UNCERTAIN_POLICIES:
        raise OptionError(f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, not {policy!r}")
    return policy


def apply_uncertain(values: np.ndarray, policy: UncertainPolicy) -> np.ndarray:
    """Float labels with ``-1`` (uncertain) replaced by the policy: NaN, 1 or 0."""
    out = np.asarray(values, dtype=np.float32).copy()
    out[out == -1] = {"missing": np.nan, "positive": 1.0, "negative": 0.0}[check_uncertain(policy)]
    return out


def finding_key(name: str) -> str:
    """What two archives' spellings of one finding share: its harmonised name, any case."""
    return harmonise(name).lower()


def finding_columns(own: Sequence[str], wanted: Sequence[str]) -> list[int | None]:
    """For each of ``wanted`` findings, the position in ``own`` of the same finding (by
    :func:`finding_key`), or None where ``own`` has none: a store's label column for each
    of a head's findings."""
    column = {finding_key(name): k for k, name in enumerate(own)}
    return [column.get(finding_key(name)) for name in wanted]


def findings_of(frame: pd.DataFrame) -> list[str]:
    """The finding columns of a metadata frame (``attrs["findings"]``; NIH's 14 by default)."""
    from cxrdask.archive.labels import LABELS

    return list(frame.attrs.get("findings") or LABELS)


def label_matrix(frame: pd.DataFrame, findings: Sequence[str] | None = None) -> np.ndarray:
    """The ``(n, findings)`` uint8 label matrix of a metadata frame: 1, 0, or :data:`MISSING`."""
    names = list(findings) if findings is not None else findings_of(frame)
    values = frame.loc[:, names].to_numpy(dtype=np.float32)
    out = np.where(np.isnan(values), MISSING, values).astype(np.uint8)
    return out


def float_labels(labels: np.ndarray) -> np.ndarray:
    """A store's uint8 labels as float32 with NaN where missing (what losses and scores take)."""
    out = np.asarray(labels).astype(np.float32)
    out[out == MISSING] = np.nan
    return out


def labelled_rows(known: np.ndarray | None, k: int, n: int) -> np.ndarray:
    """Which of ``n`` rows have a label for finding ``k``: ``known[:, k]`` (an ``(n,
    findings)`` mask), or every row where ``known`` is None (an archive that labels all)."""
    return np.ones(n, bool) if known is None else known[:, k]


def positives_string(frame: pd.DataFrame, findings: Sequence[str]) -> pd.Series:
    """``A|B`` of each row's positive findings, ``No Finding`` when none is positive."""
    import pandas as pd

    values = frame.loc[:, list(findings)].to_numpy(dtype=np.float32) == 1
    names = np.asarray(findings, dtype=object)
    return pd.Series(["|".join(names[row]) or "No Finding" for row in values], index=frame.index)


__all__ = ["DEFAULT_PATHOLOGIES", "MISSING", "UNCERTAIN_POLICIES", "UncertainPolicy",
           "apply_uncertain", "check_uncertain", "finding_columns", "finding_key", "findings_of",
           "float_labels", "harmonise",
           "harmonised_labels", "label_matrix", "labelled_rows", "ordered_findings",
           "positives_string"]
