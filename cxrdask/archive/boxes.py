"""NIH's hand-drawn boxes (``BBox_List_2017.csv``), boxes drawn from heatmaps, and their overlap.

The file holds 984 boxes on 880 images for eight findings. Its header is
``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the bracketed name is split by its commas
into four columns and empty columns follow; Infiltration is spelled ``Infiltrate``; x, y, w
and h are pixels of the 1024 x 1024 image. Localisation is scored as Wang et al. 2017 did
("ChestX-ray8", CVPR 2017, section 4.2 and Table 4): a box drawn from the heatmap is
correct when its intersection with the true box over the true box's union with it (IoU),
or over the drawn box's own area (IoBB), exceeds a threshold.
"""

from __future__ import annotations

import csv
import io

import fsspec
import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions
from cxrdask.errors import MetadataError, MissingColumnError, RowProblem

BOX_FILE = "BBox_List_2017.csv"
BOX_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                "Pneumonia", "Pneumothorax")
FILE_SPELLING = {"Infiltration": "Infiltrate"}  # NIH's box file spells it so
BOX_IMAGE_SIZE = 1024  # the boxes' coordinates are pixels of the 1024 x 1024 image
HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_FROM_FILE = {spelled: name for name, spelled in FILE_SPELLING.items()}


def format_boxes(boxes: list[tuple]) -> str:
    """``BBox_List_2017.csv`` text for ``(image, finding, x, y, w, h)`` tuples."""
    lines = [HEADER]
    for image, finding, x, y, w, h in boxes:
        lines.append(f"{image},{FILE_SPELLING.get(finding, finding)},{x!r},{y!r},{w!r},{h!r},,")
    return "\n".join(lines) + "\n"


def read_boxes(url: str, storage_options: StorageOptions | None = None) -> pd.DataFrame:
    """The boxes: ``image_index``, ``finding`` (NIH's spelling), ``x``, ``y``, ``w``, ``h``.

    Raises
    ------
    MissingColumnError
        The header is not NIH's.
    MetadataError
        A row has an unknown finding, a coordinate that is not a number, or a box of no
        area; every bad row is named by its line.
    """
    with fsspec.open(url, "rt", compression="infer", newline="",
                     **(storage_options or {})) as handle:
        text = handle.read()
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0][:3]] != ["Image Index", "Finding Label", "Bbox [x"]:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise MissingColumnError(url, message=(
            f"{url}: not NIH's box list: its header should begin {HEADER!r}, found {found!r}"))
    problems: list[RowProblem] = []
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        image = row[0].strip() if row else ""
        if len(row) < 6 or any(cell.strip() for cell in row[6:]):
            problems.append(RowProblem(line, image, "Bbox [x,y,w,h]", ",".join(row),
                                       "expected an image, a finding and four numbers"))
            continue
        finding = _FROM_FILE.get(row[1].strip(), row[1].strip())
        if finding not in BOX_FINDINGS:
            problems.append(RowProblem(line, image, "Finding Label", row[1],
                                       f"not one of the boxed findings ({', '.join(BOX_FINDINGS)})"))
            continue
        try:
            x, y, w, h = (float(cell) for cell in row[2:6])
        except ValueError:
            problems.append(RowProblem(line, image, "Bbox [x,y,w,h]", ",".join(row[2:6]),
                                       "not four numbers"))
            continue
        if not (w > 0 and h > 0 and np.isfinite([x, y, w, h]).all()):
            problems.append(RowProblem(line, image, "Bbox [x,y,w,h]", ",".join(row[2:6]),
                                       "a box needs a positive width and height"))
            continue
        records.append((image, finding, x, y, w, h))
    if problems:
        raise MetadataError(url, problems)
    return pd.DataFrame(records, columns=["image_index", "finding", "x", "y", "w", "h"])


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Areas shared by boxes ``a`` and ``b``, ``(n, 4)`` arrays of x, y, w, h."""
    dx = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    dy = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    return np.clip(dx, 0, None) * np.clip(dy, 0, None)


def iou(drawn: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Intersection over union, row by row."""
    shared = _intersection(drawn, truth)
    union = drawn[:, 2] * drawn[:, 3] + truth[:, 2] * truth[:, 3] - shared
    return np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)


def iobb(drawn: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Intersection over the *drawn* box's area (Wang et al. 2017), row by row."""
    shared = _intersection(drawn, truth)
    area = drawn[:, 2] * drawn[:, 3]
    return np.divide(shared, area, out=np.zeros_like(shared), where=area > 0)


def box_from_heatmap(heatmap: np.ndarray, width: int, height: int,
                     threshold: float = 0.5) -> tuple[float, float, float, float]:
    """The box around the heatmap's hottest region, in pixels of a ``width`` x ``height``
    image (the heatmap covers the whole image).

    The map is scaled to the image (bilinear), cut at ``threshold`` of its peak, and the
    connected region holding the peak is boxed (Wang et al. box the regions of their
    thresholded map; one box per finding is scored here)."""
    from PIL import Image
    from scipy import ndimage

    cam = np.asarray(heatmap, dtype=np.float32)
    if not np.isfinite(cam).all() or cam.max() <= 0:
        return (0.0, 0.0, float(width), float(height))  # no evidence anywhere: the whole image
    scaled = np.asarray(Image.fromarray(cam).resize((width, height), Image.Resampling.BILINEAR))
    hot = scaled >= threshold * scaled.max()
    regions, _ = ndimage.label(hot)
    peak = np.unravel_index(int(np.argmax(scaled)), scaled.shape)
    region = regions == regions[peak]
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1))


__all__ = ["BOX_FILE", "BOX_FINDINGS", "BOX_IMAGE_SIZE", "box_from_heatmap", "format_boxes",
           "iobb", "iou", "read_boxes"]
