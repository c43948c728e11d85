"""The 14 ChestX-ray14 labels (NIH spelling and order) and the ``"A|B"`` label parser."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cxrdask.errors import LabelParseError

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
N_LABELS = len(LABELS)
LABEL_POSITION = {name: i for i, name in enumerate(LABELS)}


def parse_labels(text: str) -> np.ndarray:
    """Turn a ``Finding Labels`` string into a 14-long multi-hot vector in NIH order.

    Parameters
    ----------
    text
        ``"Effusion|Atelectasis"``, or ``"No Finding"``.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(14,)``, 1 where the finding is named.

    Raises
    ------
    LabelParseError
        An empty string, an unknown finding, or ``No Finding`` combined with a finding.
    """
    if not isinstance(text, str) or not text.strip():
        raise LabelParseError("empty label string")
    names = [part.strip() for part in text.split("|")]
    vector = np.zeros(N_LABELS, dtype=np.uint8)
    if NO_FINDING in names:
        if len(names) > 1:
            raise LabelParseError(f"{NO_FINDING!r} combined with other labels in {text!r}")
        return vector
    for name in names:
        position = LABEL_POSITION.get(name)
        if position is None:
            raise LabelParseError(f"unknown label {name!r} (known: {', '.join(LABELS)})")
        vector[position] = 1
    return vector


def format_labels(vector: Iterable[int]) -> str:
    """Inverse of :func:`parse_labels`: ``"No Finding"`` for an all-zero vector."""
    names = [name for name, on in zip(LABELS, vector, strict=True) if on]
    return "|".join(names) if names else NO_FINDING


__all__ = ["LABELS", "LABEL_POSITION", "NO_FINDING", "N_LABELS", "format_labels", "parse_labels"]
