"""One view vocabulary across archives: each archive's spelling of a radiograph's projection
(NIH's ``View Position``, CheXpert's ``Frontal/Lateral`` and ``AP/PA``, MIMIC-CXR's and
DICOM's ``ViewPosition``, PadChest's ``Projection``) sorted into four families, and the
selection that training, evaluation and studies take (``views="frontal"`` by default).

The tables keep each archive's own spelling, upper-cased (``PA``, ``AP``, ``AP SUPINE``,
``LATERAL``, ``LL``, ``L``, ...); the families are read from it here:

- ``frontal``: PA and AP and their variants (``AP SUPINE``, PadChest's ``AP_horizontal``,
  ``AP AXIAL``, ``PA LLD``, ...);
- ``lateral``: ``LATERAL``, ``LL``, ``RL``, ``L``, ``LAT`` (left, right, PadChest's ``L``);
- ``other``: any other projection an archive records (obliques, ``COSTAL``, ...);
- ``unknown``: no view recorded (a DICOM export without ViewPosition).

``views="frontal"`` keeps the frontal family and rows with no view recorded (an archive that
records none, such as a private DICOM export, would otherwise lose every row; every run says
how many rows each family had), as torchxrayvision's ``views=["PA", "AP"]`` keeps the frontal
images; ``"all"`` keeps every row; a list keeps those families or exact spellings
(``["PA"]``, ``["frontal", "lateral"]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

ViewFamily = Literal["frontal", "lateral", "other", "unknown"]
VIEW_FAMILIES: tuple[str, ...] = ("frontal", "lateral", "other", "unknown")
Views = Literal["frontal", "all"] | Sequence[str]
LATERAL_VIEWS = frozenset({"LATERAL", "LAT", "LL", "RL", "L", "LEFT LATERAL", "RIGHT LATERAL"})


def view_family(view: str) -> str:
    """The family (:data:`VIEW_FAMILIES`) of one view as an archive spells it."""
    spelled = str(view).strip().upper().replace("_", " ")
    if not spelled:
        return "unknown"
    if spelled in LATERAL_VIEWS:
        return "lateral"
    if spelled.split(" ", 1)[0] in ("PA", "AP"):
        return "frontal"
    return "other"


def _by_spelling(views: np.ndarray, rule) -> np.ndarray:
    """``rule(spelling)`` of each row, computed once per distinct spelling (a store's view
    array is NumPy's StringDType, a table's object or str: all alike here)."""
    distinct, codes = np.unique(np.asarray(views, dtype=object), return_inverse=True)
    return np.asarray([rule(str(v)) for v in distinct], dtype=object)[codes.reshape(-1)]


def view_families(views: np.ndarray) -> np.ndarray:
    """:func:`view_family` of each row."""
    return _by_spelling(views, view_family)


def check_views(views: Views) -> tuple[str, ...] | str:
    """``views`` made plain: ``"frontal"``, ``"all"``, or a tuple of families or spellings;
    an empty list is refused."""
    from cxrdask.errors import OptionError

    if isinstance(views, str):
        if views not in ("frontal", "all"):
            raise OptionError(f"views must be 'frontal', 'all' or a list of views, not {views!r}")
        return views
    chosen = tuple(str(v).strip() for v in views)
    if not chosen or not all(chosen):
        raise OptionError("views: name at least one view family (frontal, lateral, other, "
                          "unknown) or view (PA, AP, LATERAL, ...)")
    return chosen


def view_mask(views: np.ndarray, selection: Views) -> np.ndarray:
    """Which rows a view selection keeps (see the module's description)."""
    selection = check_views(selection)
    if selection == "all":
        return np.ones(len(views), dtype=bool)
    if selection == "frontal":
        wanted = {"frontal", "unknown"}
    else:
        wanted = {s.lower() for s in selection} | {s.strip().upper() for s in selection}
    return _by_spelling(views, lambda v: view_family(v) in wanted
                        or v.strip().upper() in wanted).astype(bool)


def view_counts(views: np.ndarray) -> dict[str, int]:
    """Rows per view family, every family named (what runs report)."""
    families = view_families(views)
    return {family: int((families == family).sum()) for family in VIEW_FAMILIES}


__all__ = ["LATERAL_VIEWS", "VIEW_FAMILIES", "ViewFamily", "Views", "check_views", "view_counts",
           "view_families", "view_family", "view_mask"]
