"""A synthetic stand-in for Google's 2019 expert labels, in the real file's format.

The real file (see :mod:`cxrdask.archive.expert_labels`) relabels 1,962 images of NIH's test list
(set ``test``) and 2,414 of its train/validation list (set ``val``). The stand-in
relabels the same shares of a synthetic archive: the expert label is NIH's, mapped as
cxrdask maps it, with a share of positives and negatives flipped (radiologists disagreed
with many of NIH's text-mined labels), and Fracture drawn at random (no NIH label holds it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdask.archive.expert_labels import EXPERT_TO_NIH, FINDINGS, nih_composite
from cxrdask.archive.findings import label_matrix
from cxrdask.archive.synthetic.layout import format_csv

EXPERT_FILE = "google2019_nih-chest-xray-labels.csv.gz"
TEST_SHARE = 1962 / 25596  # of the test list's images
VALIDATION_SHARE = 2414 / 86524  # of the train/validation list's images


def format_expert_labels(frame: pd.DataFrame, test_images: set[str], seed: int = 0,
                         missed: float = 0.15, added: float = 0.02) -> str:
    """The CSV text: NIH's 2020 metadata columns, the four findings (YES/NO) and Set Id.

    ``missed`` of NIH's positives are NO to the experts and ``added`` of its negatives YES."""
    rng = np.random.default_rng([seed, 41])
    in_test = frame["image_index"].isin(test_images).to_numpy()
    chosen = np.flatnonzero(np.where(in_test, rng.random(len(frame)) < TEST_SHARE,
                                     rng.random(len(frame)) < VALIDATION_SHARE))
    rows = frame.iloc[chosen].reset_index(drop=True)
    labels = label_matrix(rows)
    columns: dict[str, np.ndarray] = {"Fracture": rng.random(len(rows)) < 0.02}
    for finding in FINDINGS[1:]:
        nih = nih_composite(labels, finding).astype(bool)
        flip = rng.random(len(rows)) < np.where(nih, missed, added)
        columns[finding] = nih ^ flip
    assert set(columns) == {"Fracture", *EXPERT_TO_NIH}
    metadata = format_csv(rows, "v2020", seed=seed).splitlines()
    lines = [metadata[0] + "," + ",".join([*FINDINGS, "Set Id"])]
    for i, line in enumerate(metadata[1:]):
        answers = ["YES" if columns[f][i] else "NO" for f in FINDINGS]
        lines.append(line + "," + ",".join([*answers, "test" if in_test[chosen[i]] else "val"]))
    return "\r\n".join(lines)  # as published: CRLF, and no line end after the last line


__all__ = ["EXPERT_FILE", "format_expert_labels"]
