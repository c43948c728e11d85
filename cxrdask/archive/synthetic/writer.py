"""Writing a synthetic archive at any fsspec URL, in the published layout of one of six
archives (:data:`~cxrdask.choices.LAYOUTS`): NIH ChestX-ray14's Kaggle layout
(``images_###/images/*.png``, at most 10,000 per folder, the metadata CSV, the official
split lists), or CheXpert's, MIMIC-CXR-JPG's, PadChest's, VinDr-CXR's or RSNA Pneumonia's
folders, image formats and label files; and a marker that says the archive is synthetic
and complete.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
from PIL import Image

from cxrdask._fs import StorageOptions, filesystem, full_url, join_url
from cxrdask.archive.boxes import BOX_FILE, BOX_FINDINGS, BOX_IMAGE_SIZE, format_boxes
from cxrdask.archive.findings import label_matrix
from cxrdask.archive.kinds.nih import CSV_NAMES
from cxrdask.archive.synthetic.expert import EXPERT_FILE, format_expert_labels
from cxrdask.archive.synthetic.layout import format_csv, make_metadata, official_lists
from cxrdask.archive.synthetic.layouts import Placed, copy_encoding, encode_image, plan_layout
from cxrdask.archive.synthetic.render import render_image
from cxrdask.archive.synthetic.spec import SyntheticSpec
from cxrdask.options import renamed

if TYPE_CHECKING:
    from cxrdask.progress import Progress


IMAGES_PER_FOLDER = 10_000
# Written last into a synthetic archive's root: extraction records it in the store, and
# reports then say that their numbers are not comparable with published results.
SYNTHETIC_MARKER = "cxrdask-synthetic.json"


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


def image_folder(position: int) -> str:
    """Kaggle's folder for the image at ``position``: ``images_001/images`` for the first 10,000."""
    return f"images_{position // IMAGES_PER_FOLDER + 1:03d}/images"


def _write_images(root: str, storage_options: StorageOptions | None, jobs: list[tuple]
                  ) -> tuple[int, list[tuple]]:
    """Render and write a batch of images; returns the bytes written and where the boxed
    findings' signs were drawn (image, finding, x, y, w, h in pixels of a 1024 image)."""
    fs, base = filesystem(root, storage_options)
    written = 0
    drawn: list[tuple] = []
    for relative, name, labels, size, seed, strength, encoding, header, source in jobs:
        boxes: dict[str, tuple[int, int, int, int]] = {}
        if source is None:
            pixels = render_image(labels, size=size, seed=seed, strength=strength, boxes=boxes)
        else:  # a copy of another archive's image, brought to this one's size
            with fsspec.open(source, "rb", **(storage_options or {})) as handle:
                original = Image.open(handle).convert("L")
                pixels = np.asarray(original.resize((size, size), Image.Resampling.BILINEAR))
            encoding = copy_encoding(encoding)
        data = encode_image(pixels, encoding, seed[-1], header)
        path = join_url(base, relative)
        with fs.open(path, "wb") as handle:
            handle.write(data)
        written += len(data)
        scale = BOX_IMAGE_SIZE / size
        drawn += [(name, finding, *(v * scale for v in box))
                  for finding, box in boxes.items() if finding in BOX_FINDINGS]
    return written, drawn


def make_archive(
    root: str,
    n: int = 500,
    spec: SyntheticSpec | None = None,
    *,
    threads: int | None = None,
    client=None,
    storage_options: StorageOptions | None = None,
    progress: Progress = False,
    workers: int | None = None,
    **options: Any,
) -> SyntheticArchive:
    """Write a synthetic archive of ``n`` images under ``root`` (any fsspec URL), in the
    published layout of NIH ChestX-ray14 or of another archive (``layout=``).

    Images are rendered in ``threads`` threads of this process (NumPy, the resize and the PNG
    encoder release the GIL), or on ``client`` when given, so a plain script needs no
    ``if __name__ == "__main__"`` guard for it. The same seed gives the same bytes. The CSV,
    the split lists and the ``cxrdask-synthetic.json`` marker are written after the images:
    an archive with a marker is complete.

    Parameters
    ----------
    root
        Folder or URL to write to.
    n
        Number of images.
    spec, **options
        What it looks like (:class:`SyntheticSpec`: image size, seed, sign strength,
        prevalence, CSV variant, official lists): ``make_archive("a", 200, size=256)`` or
        ``make_archive("a", 200, SyntheticSpec(size=256))``.
    threads
        Writer threads (default: one per core). ``workers=``, its old name, is deprecated.
    client
        A Dask client to render on instead.
    storage_options
        fsspec options.
    progress
        True: a progress bar; False: none; or an ``fsspec.callbacks.Callback`` of your own
        (:data:`cxrdask.progress.Progress`).

    Returns
    -------
    SyntheticArchive
        Where it is (``root``, ``metadata_url``), its size and how fast it was written.
    """
    start = time.perf_counter()
    threads = renamed("make_archive", "workers", "threads", workers, threads)
    spec = SyntheticSpec.with_options(spec, **options)
    size, seed = spec.size, spec.seed
    frame = make_metadata(n, seed=seed, prevalence=spec.prevalence)
    fs, base = filesystem(root, storage_options)
    fs.makedirs(base, exist_ok=True)
    labels = label_matrix(frame)
    if spec.layout == "nih":
        placed: list[Placed] = [(f"{image_folder(i)}/{name}", "png")
                                for i, name in enumerate(frame["image_index"])]
    else:
        placed, files = plan_layout(spec.layout, frame, seed)
    for folder in sorted({each[0].rsplit("/", 1)[0] for each in placed}):
        fs.makedirs(join_url(base, folder), exist_ok=True)
    sources = _copied_images(spec, storage_options)
    jobs = [(each[0], name, labels[i], size, (seed, 7, i), spec.strength, each[1],
             each[2] if len(each) > 2 else None, sources[i] if i < len(sources) else None)
            for i, (name, each) in enumerate(zip(frame["image_index"], placed, strict=True))]
    per_batch = max(1, min(64, math.ceil(n / ((threads or os.cpu_count() or 1) * 4))))
    batches = [jobs[i:i + per_batch] for i in range(0, n, per_batch)]
    bytes_written, drawn = _run_batches(root, storage_options, batches, threads, client, progress)

    if spec.layout == "nih":
        metadata_url = _write_nih_files(root, storage_options, frame, spec, drawn)
    else:
        for relative, content in files.items():
            fs.makedirs(join_url(base, relative).rsplit("/", 1)[0], exist_ok=True)
            with fs.open(join_url(base, relative), "wb") as handle:
                handle.write(content.encode() if isinstance(content, str) else content)
        metadata_url = join_url(root, next(iter(files)))
    settings = {"n": n, **asdict(spec)}
    with fsspec.open(join_url(root, SYNTHETIC_MARKER), "wt", **(storage_options or {})) as handle:
        json.dump({"generator": "cxrdask.archive.synthetic.make_archive", **settings}, handle, indent=1)
    return SyntheticArchive(
        root=root,
        metadata_url=metadata_url,
        n_images=n,
        n_patients=int(frame["patient_id"].nunique()),
        image_size=size,
        seconds=time.perf_counter() - start,
        bytes_written=bytes_written,
    )


def _copied_images(spec: SyntheticSpec, storage_options: StorageOptions | None) -> list[str]:
    """The images the first ``spec.copies`` rows copy: the NIH archive at ``spec.copies_of``'s
    PNGs in file-name order (refused where it has fewer)."""
    if not spec.copies:
        return []
    fs, base = filesystem(spec.copies_of, storage_options)
    found = sorted(fs.glob(join_url(base.rstrip("/"), "images_*/images/*.png")),
                   key=lambda path: path.rsplit("/", 1)[-1])
    if len(found) < spec.copies:
        from cxrdask.errors import OptionError

        raise OptionError(f"{spec.copies_of} holds {len(found)} NIH-layout images "
                          f"(images_###/images/*.png), fewer than the {spec.copies} to copy")
    return [full_url(fs, path) for path in found[:spec.copies]]


def _write_nih_files(root: str, storage_options: StorageOptions | None, frame, spec: SyntheticSpec,
                     drawn: list[tuple]) -> str:
    """NIH's metadata CSV, and with ``spec.official`` its split lists, expert labels and boxes."""
    seed = spec.seed
    metadata_url = join_url(root, CSV_NAMES[spec.csv_variant])
    with fsspec.open(metadata_url, "wt", **(storage_options or {})) as handle:
        handle.write(format_csv(frame, spec.csv_variant, seed=seed))
    if spec.official:
        train_val, test = official_lists(frame, seed=seed)
        for name, rows in (("train_val_list.txt", train_val), ("test_list.txt", test)):
            with fsspec.open(join_url(root, name), "wt", **(storage_options or {})) as handle:
                handle.write("\n".join(rows) + "\n")
        with fsspec.open(join_url(root, EXPERT_FILE), "wt", compression="gzip",
                         **(storage_options or {})) as handle:
            handle.write(format_expert_labels(frame, set(test), seed=seed))
        tested = set(test)
        with fsspec.open(join_url(root, BOX_FILE), "wt", **(storage_options or {})) as handle:
            handle.write(format_boxes([box for box in drawn if box[0] in tested]))
    return metadata_url


def synthetic_settings(root: str, storage_options: StorageOptions | None = None) -> dict | None:
    """The settings a complete synthetic archive at ``root`` was made with; None otherwise."""
    fs, base = filesystem(root, storage_options)
    try:
        with fs.open(join_url(base, SYNTHETIC_MARKER), "rt") as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _run_batches(root, storage_options, batches, workers, client, progress
                 ) -> tuple[int, list[tuple]]:
    from cxrdask.progress import progress_callback

    bar = progress_callback(progress, sum(len(b) for b in batches), unit="img", desc="synth")
    total = 0
    drawn: list[tuple] = []
    if client is not None:
        from distributed import as_completed

        futures = client.map(_write_images, [root] * len(batches),
                             [storage_options] * len(batches), batches, pure=False)
        sizes = {f.key: len(b) for f, b in zip(futures, batches, strict=True)}
        for future in as_completed(futures):
            written, boxes = future.result()
            total += written
            drawn += boxes
            bar.relative_update(sizes[future.key])
    elif (workers or os.cpu_count() or 1) > 1 and len(batches) > 1:
        with ThreadPoolExecutor(workers or os.cpu_count(), thread_name_prefix="cxrdask-synth") as pool:
            for batch, (written, boxes) in zip(batches, pool.map(
                    _write_images, [root] * len(batches), [storage_options] * len(batches),
                    batches), strict=True):
                total += written
                drawn += boxes
                bar.relative_update(len(batch))
    else:
        for batch in batches:
            written, boxes = _write_images(root, storage_options, batch)
            total += written
            drawn += boxes
            bar.relative_update(len(batch))
    bar.close()
    return total, drawn


__all__ = ["IMAGES_PER_FOLDER", "SYNTHETIC_MARKER", "SyntheticArchive", "SyntheticSpec", "image_folder",
           "make_archive", "synthetic_settings"]
