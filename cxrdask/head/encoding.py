"""What the diagnosis head takes: backbone features, then demographics, as float32.

One place for the encoding that training (the store's rows), evaluation and single-image
prediction (a user's age, sex and view, or none) must share exactly: age / 100, sex as
M = 1 and F = 0, view position as PA = 1, in that order, after the features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cxrdask.config import DEFAULT_DEMOGRAPHICS
from cxrdask.errors import OptionError

if TYPE_CHECKING:
    from cxrdask.head.model import Checkpoint

DEMOGRAPHIC_COLUMNS = ("age", "sex", "view")
UNKNOWN_AGE = 50.0  # an archive without ages (MIMIC-CXR-JPG, VinDr-CXR) stores -1


def encode_demographics(
    age: np.ndarray, sex: np.ndarray, view: np.ndarray | None = None
) -> np.ndarray:
    """The head's extra inputs: age / 100, sex (M = 1, F = 0) and optionally view (PA = 1).

    An unknown age (negative, as stores keep it) is taken as 50 and an unknown sex (neither
    M nor F) sits halfway, at 0.5, as for a single image given without them.

    Parameters
    ----------
    age, sex
        Arrays of years and ``"M"``/``"F"``.
    view
        Array of ``"PA"``/``"AP"``, or None to leave view out.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(n, 2)`` or ``(n, 3)``.
    """
    age = np.asarray(age, dtype=np.float32)
    sex = np.asarray(sex).astype(object)
    columns: list[np.ndarray] = [
        np.where(age < 0, UNKNOWN_AGE, age) / 100.0,
        np.where(sex == "M", 1.0, np.where(sex == "F", 0.0, 0.5)).astype(np.float32)]
    if view is not None:
        columns.append((np.asarray(view).astype(object) == "PA").astype(np.float32))
    return np.stack(columns, axis=1)


def encode_inputs(features: np.ndarray, age, sex, view=None,
                  demographics: Sequence[str] = DEFAULT_DEMOGRAPHICS) -> np.ndarray:
    """Head inputs: features (float32) then the chosen demographics (age/100, sex, view)."""
    unknown = set(demographics) - set(DEMOGRAPHIC_COLUMNS)
    if unknown:
        raise OptionError(f"unknown demographics {sorted(unknown)}; use age, sex, view")
    parts = [np.asarray(features, dtype=np.float32)]
    if demographics:
        encoded = encode_demographics(age, sex, view if "view" in demographics else None)
        wanted = [i for i, name in enumerate(("age", "sex", "view")) if name in demographics]
        parts.append(encoded[:, wanted])
    return np.concatenate(parts, axis=1)


def head_inputs(ckpt: Checkpoint, features: np.ndarray, age: float | None = None,
                sex: str | None = None, view: str | None = None) -> np.ndarray:
    """The head's inputs for backbone features and one set of demographics (unknown: age 50,
    sex halfway between F and M, view PA), checked against the checkpoint's width."""
    n = len(features)
    demographics = tuple(ckpt.input["demographics"])
    inputs = encode_inputs(features, np.full(n, -1.0 if age is None else float(age)),
                           np.full(n, str(sex or "").upper()[:1]), np.full(n, view or "PA"),
                           demographics)
    ckpt.check_inputs(inputs.shape[1])
    return inputs


__all__ = ["DEFAULT_DEMOGRAPHICS", "DEMOGRAPHIC_COLUMNS", "encode_demographics", "encode_inputs",
           "head_inputs"]
