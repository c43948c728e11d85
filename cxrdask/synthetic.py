"""A synthetic archive in the exact NIH ChestX-ray14 layout, with learnable disease signs.

The real archive (45 GB) cannot be fetched in tests or CI, so this module writes a stand-in:
``images_###/images/*.png`` (at most 10,000 per folder, as on Kaggle), the metadata CSV in
any of the three real variants, and the official split lists. Each image is an 8-bit
grayscale radiograph in broad strokes (body, lungs, heart, spine, ribs, noise) that
compresses like a real one, and each disease leaves a visible sign whose strength is a
parameter, so tests can prove that signal survives the whole pipeline. Everything is
deterministic for a seed: image ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import fsspec
import numpy as np
import pandas as pd
from PIL import Image

from ._fs import StorageOptions, filesystem, join_url
from .errors import OptionError
from .labels import LABELS, NO_FINDING, format_labels
from .metadata import CSV_NAMES, label_matrix

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
IMAGES_PER_FOLDER = 10_000
# Written last into a synthetic archive's root: extraction records it in the store, and
# reports then say that their numbers are not comparable with published results.
SYNTHETIC_MARKER = "cxrdask-synthetic.json"
# Strength 1 draws clearly visible signs: calibrated so that 500 images at 128 px through a
# random-weight ResNet50 and the default head reach a mean test AUC of about 0.8.
SIGN_GAIN = 2.0
CsvVariant = Literal["kaggle2017", "v2020", "sample_labels"]
Prevalence = Literal["nih", "balanced"]


@dataclass(frozen=True)
class SyntheticArchive:
    """What :func:`make_archive` wrote, and how fast."""

    root: str
    metadata_url: str
    n_images: int
    n_patients: int
    image_size: int
    seconds: float
    bytes_written: int

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")


# --------------------------------------------------------------------------- labels


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


# --------------------------------------------------------------------------- metadata


def make_metadata(n: int, seed: int = 0, prevalence: Prevalence = "nih") -> pd.DataFrame:
    """Rows of a synthetic ``Data_Entry_2017.csv`` in canonical columns (see metadata.py).

    Several images per patient (about 3.6 on average, as in NIH), a few ages above 123,
    and a few follow-up numbers that do not match the file name, as in the real file.
    """
    rng = np.random.default_rng([seed, 1])
    per_patient = []
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
    """The CSV text of ``frame`` in one of the three real NIH variants (see DESIGN.md)."""
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


# --------------------------------------------------------------------------- images


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return coords[None, :], coords[:, None]  # x (1, size), y (size, 1)


def _ellipse(x, y, cx, cy, rx, ry) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bicubically."""
    small = rng.random((cells, cells)).astype(np.float32)
    image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    return np.asarray(image)


def render_image(labels: np.ndarray, size: int = 1024, seed: int = 0,
                 strength: float = 1.0) -> np.ndarray:
    """One synthetic chest radiograph (uint8, ``size`` x ``size``) showing the given diseases.

    Signs, each scaled by ``strength``: Cardiomegaly widens the heart, Effusion fills a
    lung base, Nodule adds small round opacities, Mass a large one, Pneumothorax darkens
    an apex and erases its markings, Emphysema darkens and enlarges the lungs, and so on.
    """
    rng = np.random.default_rng(seed)
    x, y = _grid(size)
    on = dict(zip(LABELS, np.asarray(labels).astype(bool), strict=True))
    s = float(strength) * SIGN_GAIN
    jitter = lambda scale: float(rng.normal(0, scale))  # noqa: E731

    image = np.full((size, size), 18.0, dtype=np.float32)
    body = _ellipse(x, y, 0.5 + jitter(0.01), 0.6, 0.47 + jitter(0.01), 0.62) < 1
    image += body * (118.0 + jitter(6)) * (1.0 - 0.25 * y)

    lung_scale = 1.0 + (0.08 * s if on["Emphysema"] else 0.0)
    lung_cy = 0.45 + jitter(0.01)
    lungs = []
    for side in (-1, 1):
        cx = 0.5 + side * (0.19 + jitter(0.008))
        lungs.append(_ellipse(x, y, cx, lung_cy, 0.13 * lung_scale, 0.3 * lung_scale) < 1)
    lung = lungs[0] | lungs[1]
    lung_darkness = 72.0 + (22.0 * s if on["Emphysema"] else 0.0) + jitter(4)
    image -= lung * lung_darkness * (0.75 + 0.35 * (1 - y))

    # Ribs: curved bright bands across the lungs; they vanish over a pneumothorax.
    phase = rng.uniform(0, 2 * np.pi)
    ribs = np.sin(2 * np.pi * 9.0 * (y + 0.22 * (x - 0.5) ** 2) + phase) > 0.55
    rib_mask = (ribs & lung).astype(np.float32)

    heart_width = 0.13 * (1.0 + (0.38 * s if on["Cardiomegaly"] else 0.0)) * (1 + jitter(0.04))
    heart = _ellipse(x, y, 0.53 + jitter(0.01), 0.63, heart_width, 0.13) < 1
    image += heart * 78.0
    spine = np.abs(x - 0.5 + jitter(0.004)) < 0.035
    image += spine * body * (40.0 + 14.0 * (np.sin(2 * np.pi * 22 * y) > 0))
    image += (y > 0.8 + jitter(0.01)) * body * 38.0  # abdomen below the diaphragm

    side = int(rng.integers(0, 2))
    lung_x = 0.5 + (2 * side - 1) * 0.19
    if on["Effusion"]:
        level = 0.7 - 0.1 * s + 0.05 * (x - lung_x) ** 2 * 20
        image += lungs[side] * (y > level) * 75.0 * s
    if on["Nodule"]:
        for _ in range(int(rng.integers(3, 7))):
            cx, cy = lung_x + rng.uniform(-0.08, 0.08), rng.uniform(0.3, 0.6)
            image += (_ellipse(x, y, cx, cy, 0.025, 0.025) < 1) * 75.0 * s
    if on["Mass"]:
        cx, cy = 0.5 + (1 - 2 * side) * 0.19 + rng.uniform(-0.04, 0.04), rng.uniform(0.35, 0.55)
        image += (_ellipse(x, y, cx, cy, 0.085, 0.085) < 1) * 80.0 * s
    if on["Infiltration"]:
        patches = _smooth_field(rng, size, 12) > 0.62
        image += lung * patches * 40.0 * s
    if on["Atelectasis"]:
        band = np.abs(y - (0.6 + 0.03 * (x - lung_x) * 10) - jitter(0.02)) < 0.035
        image += lungs[1 - side] * band * 70.0 * s
    if on["Pneumonia"]:
        cy = rng.uniform(0.5, 0.62)
        blob = np.exp(-_ellipse(x, y, lung_x, cy, 0.08, 0.08))
        image += lungs[side] * blob * 75.0 * s
    if on["Consolidation"]:
        cy = rng.uniform(0.52, 0.65)
        image += lungs[1 - side] * (_ellipse(x, y, 1 - lung_x, cy, 0.09, 0.07) < 1) * 90.0 * s
    if on["Edema"]:
        for hilum in (0.38, 0.62):
            image += lung * np.exp(-_ellipse(x, y, hilum, 0.48, 0.11, 0.14)) * 50.0 * s
    if on["Fibrosis"]:
        lines = np.sin(2 * np.pi * 60 * x) * np.sin(2 * np.pi * 55 * y) > 0.7
        image += lung * (y < 0.5) * lines * 60.0 * s
    if on["Pleural_Thickening"]:
        edge = lung & (_ellipse(x, y, lung_x, lung_cy, 0.13 * lung_scale, 0.3 * lung_scale) > 0.7)
        image += edge * lungs[side] * 65.0 * s
    if on["Hernia"]:
        image += (_ellipse(x, y, 0.5, 0.76, 0.07, 0.05) < 1) * 60.0 * s
        image -= (_ellipse(x, y, 0.5, 0.76, 0.03, 0.02) < 1) * 70.0 * s
    if on["Pneumothorax"]:
        apex = lungs[side] & (_ellipse(x, y, lung_x + (2 * side - 1) * 0.05, 0.25, 0.1, 0.14) < 1)
        image -= apex * 30.0 * s
        rib_mask *= ~apex

    image += rib_mask * 26.0
    image += (_smooth_field(rng, size, 6) - 0.5) * 24.0  # exposure unevenness
    # Quantum noise, spatially correlated like a real detector's (white noise compresses
    # far worse than real radiographs; this gives NIH-like 350-500 KB PNGs at 1024).
    grain = rng.standard_normal((size // 2, size // 2), dtype=np.float32) * 3.0
    image += np.asarray(Image.fromarray(grain).resize((size, size), Image.BILINEAR))
    image += rng.standard_normal((size, size), dtype=np.float32) * 0.5
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grayscale PNG bytes (zlib level 1: near the size of level 6, five times faster)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_folder(position: int) -> str:
    """Kaggle's folder for the image at ``position``: ``images_001/images`` for the first 10,000."""
    return f"images_{position // IMAGES_PER_FOLDER + 1:03d}/images"


def _write_images(root: str, storage_options: StorageOptions | None, jobs: list[tuple]) -> int:
    """Render and write a batch of images; returns the bytes written."""
    fs, base = filesystem(root, storage_options)
    written = 0
    for position, name, labels, size, seed, strength in jobs:
        data = encode_png(render_image(labels, size=size, seed=seed, strength=strength))
        path = join_url(base, image_folder(position), name)
        with fs.open(path, "wb") as handle:
            handle.write(data)
        written += len(data)
    return written


def make_archive(
    root: str,
    n: int = 500,
    *,
    size: int = 1024,
    seed: int = 0,
    strength: float = 1.0,
    prevalence: Prevalence = "nih",
    csv_variant: CsvVariant = "kaggle2017",
    official: bool = True,
    workers: int | None = None,
    client=None,
    storage_options: StorageOptions | None = None,
    progress: bool = False,
) -> SyntheticArchive:
    """Write a synthetic NIH-layout archive of ``n`` images under ``root`` (any fsspec URL).

    Images are rendered in parallel: on ``client`` (a Dask client) when given, else in
    ``workers`` threads of this process (default: one per core; NumPy, the resize and the
    PNG encoder release the GIL), so a plain script needs no ``if __name__ == "__main__"``
    guard for it. The same seed gives the same bytes. The metadata CSV, the split lists and
    the ``cxrdask-synthetic.json`` marker are written after the images: an archive with a
    marker is complete.
    """
    start = time.perf_counter()
    frame = make_metadata(n, seed=seed, prevalence=prevalence)
    fs, base = filesystem(root, storage_options)
    fs.makedirs(base, exist_ok=True)
    for folder in sorted({image_folder(i) for i in range(n)}):
        fs.makedirs(join_url(base, folder), exist_ok=True)

    labels = label_matrix(frame)
    jobs = [(i, name, labels[i], size, (seed, 7, i), strength)
            for i, name in enumerate(frame["image_index"])]
    per_batch = max(1, min(64, math.ceil(n / ((workers or os.cpu_count() or 1) * 4))))
    batches = [jobs[i:i + per_batch] for i in range(0, n, per_batch)]
    bytes_written = _run_batches(root, storage_options, batches, workers, client, progress)

    metadata_url = join_url(root, CSV_NAMES[csv_variant])
    with fsspec.open(metadata_url, "wt", **(storage_options or {})) as handle:
        handle.write(format_csv(frame, csv_variant, seed=seed))
    if official:
        train_val, test = official_lists(frame, seed=seed)
        for name, rows in (("train_val_list.txt", train_val), ("test_list.txt", test)):
            with fsspec.open(join_url(root, name), "wt", **(storage_options or {})) as handle:
                handle.write("\n".join(rows) + "\n")
    settings = {"n": n, "size": size, "seed": seed, "strength": strength,
                "prevalence": prevalence, "csv_variant": csv_variant, "official": official}
    with fsspec.open(join_url(root, SYNTHETIC_MARKER), "wt", **(storage_options or {})) as handle:
        json.dump({"generator": "cxrdask.synthetic.make_archive", **settings}, handle, indent=1)
    return SyntheticArchive(
        root=root,
        metadata_url=metadata_url,
        n_images=n,
        n_patients=int(frame["patient_id"].nunique()),
        image_size=size,
        seconds=time.perf_counter() - start,
        bytes_written=bytes_written,
    )


def synthetic_settings(root: str, storage_options: StorageOptions | None = None) -> dict | None:
    """The settings a complete synthetic archive at ``root`` was made with; None otherwise."""
    fs, base = filesystem(root, storage_options)
    try:
        with fs.open(join_url(base, SYNTHETIC_MARKER), "rt") as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _run_batches(root, storage_options, batches, workers, client, progress) -> int:
    from .progress import progress_bar as tqdm

    bar = tqdm(total=sum(len(b) for b in batches), unit="img", desc="synth", disable=not progress)
    total = 0
    if client is not None:
        from distributed import as_completed

        futures = client.map(_write_images, [root] * len(batches),
                             [storage_options] * len(batches), batches, pure=False)
        sizes = {f.key: len(b) for f, b in zip(futures, batches, strict=True)}
        for future in as_completed(futures):
            total += future.result()
            bar.update(sizes[future.key])
    elif (workers or os.cpu_count() or 1) > 1 and len(batches) > 1:
        with ThreadPoolExecutor(workers or os.cpu_count(), thread_name_prefix="cxrdask-synth") as pool:
            for batch, written in zip(batches, pool.map(
                    _write_images, [root] * len(batches), [storage_options] * len(batches),
                    batches), strict=True):
                total += written
                bar.update(len(batch))
    else:
        for batch in batches:
            total += _write_images(root, storage_options, batch)
            bar.update(len(batch))
    bar.close()
    return total


# --------------------------------------------------------------------------- feature stores


def make_feature_store(
    url: str,
    n_rows: int,
    *,
    feature_dim: int = 2048,
    chunk_rows: int = 512,
    seed: int = 0,
    signal: float = 1.0,
    dtype: str = "float16",
    storage_options: StorageOptions | None = None,
    shuffle_labels: bool = False,
):
    """A complete feature store of ``n_rows`` with no images behind it (benchmarks, tests).

    Features are non-negative like pooled ReLU outputs, and each disease shifts its own
    random direction by ``signal`` standard deviations, so a head can learn them; with
    ``shuffle_labels`` the labels are permuted after the features are made (no signal).
    Written chunk by chunk: memory stays at one chunk whatever ``n_rows``.
    """
    from .imaging import Preprocessing
    from .splits import patient_split
    from .store import STATUS_OK, FeatureStore

    rng = np.random.default_rng([seed, 11])
    frame = make_metadata(n_rows, seed=seed)
    frame["split"] = patient_split(frame["patient_id"], seed=seed)
    frame = frame.sort_values("split", kind="stable").reset_index(drop=True)
    labels = label_matrix(frame)
    if shuffle_labels:
        frame.loc[:, list(LABELS)] = labels[rng.permutation(n_rows)]
    directions = rng.standard_normal((len(LABELS), feature_dim)).astype(np.float32)
    store = FeatureStore.create(
        url, frame, chunk_rows=chunk_rows, dtype=dtype, storage_options=storage_options,
        backbone={"name": "synthetic", "feature_dim": feature_dim, "kind": "random",
                  "weights": f"synthetic features, seed {seed}"},
        preprocessing=Preprocessing().to_dict(),
        split={"method": "patient", "seed": seed, "description": f"patient split, seed {seed}"},
        extra={"archive": {"root": None, "synthetic": True}},
    )
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        noise = np.random.default_rng([seed, 12, chunk]).standard_normal(
            (stop - start, feature_dim), dtype=np.float32)
        features = np.abs(noise + signal * labels[start:stop].astype(np.float32) @ directions)
        store.write_chunk(chunk, features, np.full(stop - start, STATUS_OK, np.uint8),
                          [""] * (stop - start))
    store.update_provenance(complete=True, failed_rows=0)
    return store


__all__ = [
    "CSV_NAMES",
    "NIH_COUNTS",
    "NO_FINDING",
    "SyntheticArchive",
    "format_csv",
    "make_archive",
    "make_feature_store",
    "make_metadata",
    "official_lists",
    "render_image",
    "sample_labels",
    "synthetic_settings",
]
