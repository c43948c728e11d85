"""Localisation against NIH's boxes: Grad-CAM of the boxed finding, thresholded into a box.

For every box of ``BBox_List_2017.csv`` on an image of the evaluated split, the head's
Grad-CAM map of that finding (the web page's method: through the head, on the backbone's
last convolutional block) is scaled to the image, cut at half its peak, and the region
around the peak is boxed (:func:`cxrdask.archive.boxes.box_from_heatmap`). The box is scored as
Wang et al. 2017 scored theirs: accuracy at IoBB thresholds 0.1 to 0.9 (their Table 4,
printed beside ours) and at IoU thresholds 0.1 to 0.7. A control pairs each true box with
the map of *another* image with the same finding: what a map that knows nothing of this
image scores, so the gap says how much the maps localise.

The images are read and the maps computed on a Dask cluster, a task per group of images,
each worker loading the backbone and head once.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrdask._fs import StorageOptions, filesystem
from cxrdask.archive.boxes import BOX_FINDINGS, BOX_IMAGE_SIZE, box_from_heatmap, iobb, iou, read_boxes
from cxrdask.config import DEFAULT_READ_RETRIES
from cxrdask.errors import OptionError
from cxrdask.options import renamed
from cxrdask.runtime.retries import call_with_retries

IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
CAM_THRESHOLD = 0.5
IMAGES_PER_TASK = 16
# Wang et al., "ChestX-ray8", CVPR 2017, Table 4: localisation accuracy at T(IoBB).
WANG_2017_IOBB = {
    0.1: (0.7277, 0.9931, 0.7124, 0.7886, 0.4352, 0.1645, 0.7500, 0.4591),
    0.25: (0.5500, 0.9794, 0.5424, 0.5772, 0.2823, 0.0506, 0.5583, 0.3469),
    0.5: (0.2833, 0.8767, 0.3333, 0.4227, 0.1411, 0.0126, 0.3833, 0.1836),
    0.75: (0.1666, 0.7260, 0.2418, 0.3252, 0.1176, 0.0126, 0.2583, 0.1020),
    0.9: (0.1333, 0.6849, 0.2091, 0.2520, 0.0588, 0.0126, 0.2416, 0.0816),
}
WANG_CITATION = ("Wang X. et al., ChestX-ray8, CVPR 2017, Table 4 (their own heatmaps and "
                 "boxes, several boxes per image; accuracy at T(IoBB))")


def _diagnoser(checkpoint: str, weights: str | None):
    """The worker's model for ``checkpoint``, loaded once (again if the file changed)."""
    stat = os.stat(checkpoint)
    return _load_diagnoser(checkpoint, stat.st_mtime_ns, stat.st_size, weights)


@functools.lru_cache(maxsize=2)
def _load_diagnoser(checkpoint: str, mtime_ns: int, size: int, weights: str | None):
    from cxrdask.serve.diagnosis import Diagnoser

    return Diagnoser.load(checkpoint, weights=weights, device="cpu")


def draw_boxes(items: list[tuple], checkpoint: str, weights: str | None,
               storage_options: StorageOptions | None, threshold: float) -> list[tuple]:
    """The Dask task: for each ``(url, image, age, sex, view, findings)``, the box drawn
    from each finding's Grad-CAM, in pixels of a 1024 image: ``(image, finding, x, y, w, h)``.
    A transient read failure (a reset, a 503) is tried again as extraction does; an image
    that still cannot be read gives no boxes (its true boxes then count as missed)."""
    model = _diagnoser(checkpoint, weights)
    drawn = []
    for url, image, age, sex, view, findings in items:
        fs, path = filesystem(url, storage_options)
        try:
            data = call_with_retries(functools.partial(fs.cat_file, path), DEFAULT_READ_RETRIES)
            diagnosis = model.diagnose(data, image, age=age, sex=sex, view=view)
        except Exception:  # a missing or undecodable image misses its boxes
            continue
        assert diagnosis.heatmaps is not None
        for finding in findings:
            cam = np.asarray(diagnosis.heatmaps[finding])
            box = box_from_heatmap(cam, diagnosis.width, diagnosis.height, threshold)
            drawn.append((image, finding, *to_box_space(box, diagnosis.width, diagnosis.height)))
    return drawn


def to_box_space(box: tuple[float, float, float, float], width: int, height: int
                 ) -> tuple[float, float, float, float]:
    """``(x, y, w, h)`` in pixels of a ``width`` x ``height`` image, in the coordinates of
    NIH's box file (its 1024 x 1024 images): x and w scaled by the width, y and h by the
    height, so a non-square image's boxes land where they were drawn."""
    x, y, w, h = box
    sx, sy = BOX_IMAGE_SIZE / width, BOX_IMAGE_SIZE / height
    return x * sx, y * sy, w * sx, h * sy


@dataclass
class LocalisationReport:
    """Per true box, the drawn box and its overlaps; per finding, accuracies."""

    boxes: pd.DataFrame  # image_index, finding, x, y, w, h, drawn_*, iou, iobb, control_iou, control_iobb
    accuracy: pd.DataFrame  # finding, measure (iobb|iou), threshold, accuracy, control, wang2017
    images: int
    listed: int  # boxes in the file
    missing_images: int

    def at(self, measure: str, threshold: float) -> pd.DataFrame:
        table = self.accuracy
        return table[(table["measure"] == measure) & np.isclose(table["threshold"], threshold)]

    def mean_accuracy(self, measure: str = "iobb", threshold: float = 0.5,
                      column: str = "accuracy") -> float:
        """Over every true box (not a mean of per-finding accuracies)."""
        scored = self.boxes[measure if column == "accuracy" else f"control_{measure}"]
        return float((scored > threshold).mean()) if len(scored) else float("nan")


def localise(store, checkpoint: str, boxes: str | None = None, images: str | None = None, *,
             split: str = "test", client=None, weights: str | None = None,
             storage_options: StorageOptions | None = None, threshold: float = CAM_THRESHOLD,
             seed: int = 0, **old_names: str) -> LocalisationReport:
    """Draw a box from the Grad-CAM map of every boxed finding on ``split``'s images and
    score it against NIH's box (see the module's description).

    Parameters
    ----------
    store
        The feature store (its rows give each image's split, age, sex and view).
    checkpoint
        The head checkpoint file.
    boxes
        ``BBox_List_2017.csv`` (``boxes_url=``, its old name, is deprecated).
    images
        The archive's images, as for extraction (``images_root=``, its old name, is
        deprecated); the names :class:`~cxrdask.config.EvaluateConfig` gives both.
    client
        A Dask client; None: :func:`~cxrdask.runtime.cluster.session_client` (the current client,
        else a local cluster kept for the Python session).
    weights
        The backbone weights file, when the head was trained on one.
    threshold
        The share of a map's peak above which it is boxed.
    seed
        Seed of the control's pairing.
    """
    from cxrdask.archive.images import locate_images
    from cxrdask.archive.splits import in_split
    from cxrdask.head.batches import open_store

    unknown = set(old_names) - {"boxes_url", "images_root"}
    if unknown:
        raise TypeError(f"localise() got unexpected keyword arguments {sorted(unknown)}")
    boxes = renamed("localise", "boxes_url", "boxes", old_names.get("boxes_url"), boxes)
    images = renamed("localise", "images_root", "images", old_names.get("images_root"), images)
    if boxes is None or images is None:
        raise OptionError("localise needs the boxes (BBox_List_2017.csv) and the images they "
                          "were drawn on")
    if not 0.0 < threshold < 1.0:
        raise OptionError(f"the heatmap threshold must be between 0 and 1, not {threshold}")
    table_of_boxes = read_boxes(boxes, storage_options)
    store = open_store(store, storage_options)
    table = store.table(["image_index", "age", "sex", "view", "split"])
    table = table[in_split(table["split"].to_numpy(), split)].set_index("image_index")
    listed = len(table_of_boxes)
    on_split = table_of_boxes[table_of_boxes["image_index"].isin(table.index)].reset_index(drop=True)
    located = locate_images(images, storage_options=storage_options,
                            expected=on_split["image_index"].unique())
    urls = located.urls
    items = []
    for image, group in on_split.groupby("image_index", sort=True):
        if image not in urls:
            continue
        row = table.loc[image]
        items.append((urls[image], image, float(row["age"]), str(row["sex"]), str(row["view"]),
                      sorted(set(group["finding"]))))
    drawn = _run(items, checkpoint, weights, storage_options, threshold, client)
    return _score(on_split, drawn, listed, len(items), seed)


def _run(items, checkpoint, weights, storage_options, threshold, client) -> list[tuple]:
    if not items:
        return []
    groups = [items[i:i + IMAGES_PER_TASK] for i in range(0, len(items), IMAGES_PER_TASK)]
    if client is None:
        from cxrdask.runtime.cluster import session_client

        client = session_client(announce=False)
    futures = client.map(draw_boxes, groups, checkpoint=checkpoint, weights=weights,
                         storage_options=storage_options, threshold=threshold, pure=False)
    try:
        return [box for result in client.gather(futures) for box in result]
    except BaseException:
        client.cancel(futures)
        raise


def _score(boxes: pd.DataFrame, drawn: list[tuple], listed: int, images: int,
           seed: int) -> LocalisationReport:
    drawn_frame = pd.DataFrame(drawn, columns=["image_index", "finding", "drawn_x", "drawn_y",
                                               "drawn_w", "drawn_h"])
    scored = boxes.merge(drawn_frame, on=["image_index", "finding"], how="left")
    missing = scored["drawn_w"].isna()
    truth = scored[["x", "y", "w", "h"]].to_numpy(float)
    mine = scored[["drawn_x", "drawn_y", "drawn_w", "drawn_h"]].fillna(0.0).to_numpy(float)
    scored["iou"], scored["iobb"] = iou(mine, truth), iobb(mine, truth)
    # The control: each true box against the drawn box of another image with that finding.
    rng = np.random.default_rng(seed)
    control = mine.copy()
    for _, index in scored.groupby("finding").indices.items():
        if len(index) > 1:
            shift = int(rng.integers(1, len(index)))
            control[index] = mine[np.roll(index, shift)]
    scored["control_iou"], scored["control_iobb"] = iou(control, truth), iobb(control, truth)
    records = []
    for measure, thresholds in (("iobb", IOBB_THRESHOLDS), ("iou", IOU_THRESHOLDS)):
        for t in thresholds:
            for position, finding in enumerate(BOX_FINDINGS):
                rows = scored[scored["finding"] == finding]
                published = WANG_2017_IOBB[t][position] if measure == "iobb" else np.nan
                records.append({
                    "finding": finding, "measure": measure, "threshold": t, "boxes": len(rows),
                    "accuracy": float((rows[measure] > t).mean()) if len(rows) else np.nan,
                    "control": float((rows[f"control_{measure}"] > t).mean()) if len(rows) else np.nan,
                    "wang2017": published})
    return LocalisationReport(boxes=scored, accuracy=pd.DataFrame(records), images=images,
                              listed=listed, missing_images=int(missing.sum()))


__all__ = [
    "IOBB_THRESHOLDS",
    "IOU_THRESHOLDS",
    "WANG_2017_IOBB",
    "LocalisationReport",
    "draw_boxes",
    "localise",
]
