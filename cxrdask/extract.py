"""Distributed feature extraction: one Dask task per store chunk, resumable, with progress.

A task carries only its rows' URLs and a small picklable config. On the worker it reads
the bytes through fsspec (many at once, so object-store latency overlaps), decodes and
resizes them in a thread pool while the previous batch runs through the backbone (built
once per worker process and cached), writes its chunk of the store, then its done marker.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ._fs import StorageOptions, filesystem
from .backbone import BackboneSpec, cached_runner, check_weights_available
from .errors import ExtractionFailedError, ImageDecodeError, ImagesNotFoundError, OptionError
from .imaging import Preprocessing, decode_gray, flip_for, to_model_input
from .lease import StoreLease
from .metadata import locate_images, read_metadata
from .metrics import CHUNK_PREFIX, install_counters, report_chunk, span_metrics
from .splits import TRAIN, assign_splits
from .store import STATUS_FAILED, STATUS_OK, STATUS_PENDING, FeatureStore, rows_fingerprint

DEFAULT_BATCH_SIZE = 8  # fastest on 2-core CPUs (measured); GPUs want 64 or more
MAX_AUTO_CHUNK_ROWS = 512
TASKS_PER_THREAD = 4  # tasks per worker thread that chunk_rows="auto" aims for
DEFAULT_MAX_FAILED_FRACTION = 0.05
SplitMethod = Literal["auto", "official", "patient", "random"]
BackboneName = Literal["resnet50", "densenet121", "resnet18"]
Dtype = Literal["float16", "float32"]
Precision = Literal["fp32", "bf16", "fp16"]
Engine = Literal["torch", "onnxruntime"]
Preset = Literal["default", "seed2018"]
PRESETS = {
    # The 2018 system: random image-level split, random flip of training images.
    "seed2018": {"split": "random", "flip": "train"},
    "default": {},
}


STAGES = ("read_s", "decode_s", "resize_s", "forward_s", "write_s")
STAGE_NAMES = tuple(stage.removesuffix("_s") for stage in STAGES)


@dataclass(frozen=True)
class TaskConfig:
    """Everything a chunk task needs besides its rows; small, so the graph stays light."""

    store_url: str
    storage_options: StorageOptions | None
    backbone: BackboneSpec
    preprocessing: Preprocessing
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    engine: str = "torch"
    batch_size: int = DEFAULT_BATCH_SIZE
    io_threads: int = 8
    torch_threads: int = 1
    flip_seed: int = 0


@dataclass
class ExtractSummary:
    """What a run did: rows written and failed, chunks skipped, speed, where time went."""

    store_url: str
    rows_total: int
    rows_written: int
    rows_failed: int
    chunks_total: int
    chunks_skipped: int
    chunks_run: int
    seconds: float
    warmup_seconds: float
    failures: list[tuple[str, str]] = field(default_factory=list)
    conversions: list[tuple[str, str]] = field(default_factory=list)
    timings: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    dashboard_link: str | None = None
    split: str = ""
    chunk_rows: int = 0
    store_rows_failed: int = 0  # failed rows in the whole store, earlier runs included
    store_rows_done: int = 0  # rows of the store that are written (ok or failed)
    # Seconds per stage over every worker, read back from the scheduler's fine performance
    # metrics of this run's span (what the dashboard shows); empty when nothing ran.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    span_id: str | None = None

    @property
    def failed_fraction(self) -> float:
        """Failed rows as a share of the store's written rows (what the threshold checks)."""
        return self.store_rows_failed / self.store_rows_done if self.store_rows_done else 0.0

    @property
    def images_per_second(self) -> float:
        done = self.rows_written + self.rows_failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def per_worker(self) -> pd.DataFrame:
        """Seconds per stage (read, decode, resize, forward, write) summed per worker."""
        if self.timings.empty:
            return self.timings
        columns = ["images", *STAGES, "task_s"]
        return self.timings.groupby("worker")[columns].sum()

    def __str__(self) -> str:
        lines = [
            f"store: {self.store_url}",
            f"split: {self.split}",
            f"chunks: {self.chunks_run} run, {self.chunks_skipped} skipped as already done, "
            f"{self.chunks_total} in all ({self.chunk_rows} rows each)",
            f"rows: {self.rows_written} written, {self.rows_failed} failed "
            f"(of {self.rows_total} in the store)",
            f"time: {self.seconds:.1f} s ({self.images_per_second:.1f} images/s), "
            f"model warm-up {self.warmup_seconds:.1f} s",
        ]
        if self.failures:
            lines.append("failed images (also in the store: FeatureStore.failures()):")
            lines += [f"  {name}: {reason}" for name, reason in self.failures[:10]]
            if len(self.failures) > 10:
                lines.append(f"  ... and {len(self.failures) - 10} more")
        if self.conversions:
            lines.append(f"converted images: {len(self.conversions)} "
                         f"(e.g. {self.conversions[0][0]}: {self.conversions[0][1]})")
        if any(self.stage_seconds.values()):
            total = sum(self.stage_seconds.values())
            lines.append("seconds per stage, all workers (the dashboard's Fine Performance "
                         "Metrics): " + ", ".join(f"{stage} {seconds:.1f} ({seconds / total:.0%})"
                                                  for stage, seconds in self.stage_seconds.items()))
        if not self.timings.empty:
            lines.append("seconds per stage and worker:")
            lines += ["  " + row for row in self.per_worker().round(2).to_string().splitlines()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- worker side

_WORKER_STATE: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_resources(config: TaskConfig):
    """This process's store handle and I/O pool, made once and reused by every task."""
    with _WORKER_LOCK:
        if _WORKER_STATE.get("torch_threads") != config.torch_threads:
            torch.set_num_threads(config.torch_threads)
            _WORKER_STATE["torch_threads"] = config.torch_threads
        key = ("store", config.store_url, repr(config.storage_options))
        if key not in _WORKER_STATE:
            _WORKER_STATE[key] = FeatureStore.open(config.store_url, config.storage_options, "r+")
        pool_key = ("pool", config.io_threads)
        if pool_key not in _WORKER_STATE:
            _WORKER_STATE[pool_key] = ThreadPoolExecutor(config.io_threads,
                                                         thread_name_prefix="cxrdask-io")
        return _WORKER_STATE[key], _WORKER_STATE[pool_key]


def _load_one(url: str, name: str, flip: bool, config: TaskConfig):
    """Read and preprocess one image: (array | None, note | error, read_s, decode_s, resize_s)."""
    t0 = time.perf_counter()
    try:
        fs, path = filesystem(url, config.storage_options)
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None, "file not found", time.perf_counter() - t0, 0.0, 0.0
    except OSError as exc:
        return None, f"cannot read: {exc}", time.perf_counter() - t0, 0.0, 0.0
    t1 = time.perf_counter()
    try:
        gray, note = decode_gray(data, name)
    except ImageDecodeError as exc:
        return None, exc.reason, t1 - t0, time.perf_counter() - t1, 0.0
    t2 = time.perf_counter()
    array = to_model_input(gray, config.preprocessing, flip)
    return array, note, t1 - t0, t2 - t1, time.perf_counter() - t2


def _runner(config: TaskConfig):
    """This process's backbone runner for the task's settings (built once, then cached)."""
    return cached_runner(config.backbone, config.device, config.precision, config.compile,
                         config.batch_size, config.engine)


def warm_worker(config: TaskConfig) -> float:
    """Build (and compile) the worker's backbone ahead of the chunks; returns seconds taken."""
    start = time.perf_counter()
    _worker_resources(config)
    runner = _runner(config)
    size = config.preprocessing.size
    runner(np.zeros((config.batch_size, 3, size, size), dtype=np.float32))
    return time.perf_counter() - start


def extract_chunk(chunk: int, urls: list[str | None], names: list[str], flips: list[bool],
                  config: TaskConfig) -> dict:
    """Compute and write one chunk of the store (idempotent: a re-run writes the same values)."""
    started = time.perf_counter()
    store, pool = _worker_resources(config)
    runner = _runner(config)
    n = len(names)
    features = np.full((n, runner.spec.feature_dim), np.nan, dtype=np.float32)
    status = np.full(n, STATUS_FAILED, dtype=np.uint8)
    errors = [""] * n
    notes: list[tuple[str, str]] = []
    timing = dict.fromkeys(STAGES, 0.0)

    def submit(i: int):
        if urls[i] is None:
            return None
        return pool.submit(_load_one, urls[i], names[i], flips[i], config)

    # Keep two batches of reads in flight ahead of the network: latency overlaps, memory is bounded.
    window = 2 * config.batch_size
    pending = {i: submit(i) for i in range(min(window, n))}
    batch_rows: list[int] = []
    batch_arrays: list[np.ndarray] = []

    def run_batch() -> None:
        t = time.perf_counter()
        features[batch_rows] = runner(np.stack(batch_arrays))
        timing["forward_s"] += time.perf_counter() - t
        status[batch_rows] = STATUS_OK
        batch_rows.clear()
        batch_arrays.clear()

    for i in range(n):
        future = pending.pop(i)
        if i + window < n:
            pending[i + window] = submit(i + window)
        if future is None:
            errors[i] = "file not found"
            continue
        array, message, read_s, decode_s, resize_s = future.result()
        timing["read_s"] += read_s
        timing["decode_s"] += decode_s
        timing["resize_s"] += resize_s
        if array is None:
            errors[i] = message
            continue
        if message:
            notes.append((names[i], message))
        batch_rows.append(i)
        batch_arrays.append(array)
        if len(batch_rows) == config.batch_size:
            run_batch()
    if batch_rows:
        run_batch()

    t = time.perf_counter()
    store.write_chunk(chunk, features, status, errors)
    timing["write_s"] = time.perf_counter() - t
    failed = int((status != STATUS_OK).sum())
    report_chunk({stage.removesuffix("_s"): seconds for stage, seconds in timing.items()}, n, failed)
    return {
        "chunk": chunk,
        "worker": _worker_name(),
        "images": n,
        "ok": int((status == STATUS_OK).sum()),
        "failures": [(names[i], errors[i]) for i in range(n) if status[i] != STATUS_OK],
        "conversions": notes,
        **timing,
        "task_s": time.perf_counter() - started,
    }


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except ValueError:
        return f"pid-{os.getpid()}"


# --------------------------------------------------------------------------- client side


def prepare_rows(metadata: pd.DataFrame, split: str | np.ndarray = "auto", *, seed: int = 0,
                 archive_root: str | None = None,
                 storage_options: StorageOptions | None = None) -> tuple[pd.DataFrame, dict]:
    """Rows in store order (train, then validation, then test) with a ``split`` column.

    Contiguous splits mean that training reads only training chunks.
    """
    frame = metadata.reset_index(drop=True).copy()
    if isinstance(split, str):
        codes, spec = assign_splits(frame, split, seed=seed, archive_root=archive_root,
                                    storage_options=storage_options)
        split_info = {"method": spec.method, "seed": spec.seed, "fractions": list(spec.fractions),
                      "description": spec.describe()}
    else:
        codes = np.asarray(split, dtype=np.uint8)
        split_info = {"method": "given", "description": "split codes given by the caller"}
    frame["split"] = codes
    frame = frame.sort_values("split", kind="stable").reset_index(drop=True)
    return frame, split_info


def auto_chunk_rows(n_rows: int, worker_threads: int, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Rows per chunk (and task) for ``n_rows`` on a cluster of ``worker_threads`` threads.

    Every thread gets about ``TASKS_PER_THREAD`` tasks, so the last ones balance out (one
    task of 512 and one of 87 left one of two workers idle 86% of a 599-row run); a whole
    number of batches; never above ``MAX_AUTO_CHUNK_ROWS`` (what training reads at once).
    """
    per_task = math.ceil(n_rows / max(1, worker_threads * TASKS_PER_THREAD))
    whole_batches = math.ceil(per_task / batch_size) * batch_size
    return int(min(MAX_AUTO_CHUNK_ROWS, max(batch_size, whole_batches)))


@dataclass
class ExtractionPlan:
    """A run checked before it starts: rows, where each image is, backbone, store settings.

    :func:`plan_extraction` makes it without starting a cluster or writing anything, so
    every mistake it can find (a wrong images root, missing images, unavailable weights,
    a store made with other settings) is reported before any work starts.
    """

    rows: pd.DataFrame
    urls: dict[str, str]
    missing: list[str]
    images_root: str
    store_url: str
    storage_options: StorageOptions | None
    spec: BackboneSpec
    identity: dict
    preprocessing: Preprocessing
    split_info: dict
    split_seed: int
    archive: dict
    chunk_rows: int | Literal["auto"]
    batch_size: int
    dtype: Dtype
    precision: Precision
    compile: bool
    engine: Engine
    device: str
    resume: bool
    strict: bool
    max_failed_fraction: float
    io_threads: int
    store_exists: bool

    def settings(self) -> dict:
        """The settings recorded in the store, which a resumed run must match."""
        return dict(backbone=self.identity, preprocessing=self.preprocessing.to_dict(),
                    dtype=self.dtype, precision=self.precision, compile=self.compile,
                    engine=self.engine, split=self.split_info)

    def describe(self) -> str:
        """Lines for the user before the run: images found, split, backbone, the store."""
        n = len(self.rows)
        found = n - len(self.missing)
        lines = [f"images: {found} of {n} found under {self.images_root}"
                 + (f" ({len(self.missing)} missing, e.g. {self.missing[0]}: they will be "
                    "recorded as failed rows)" if self.missing else "")]
        lines.append(f"split: {self.split_info.get('description', '')}")
        lines.append(f"backbone: {self.identity['name']} ({self.identity['weights']}), "
                     f"{self.engine} {self.precision}, features as {self.dtype}")
        state = "resumed (finished chunks are skipped)" if self.resume and self.store_exists \
            else "new" if not self.store_exists else "overwritten"
        lines.append(f"store: {self.store_url} ({state})")
        return "\n".join(lines)


def plan_extraction(
    metadata: pd.DataFrame | str,
    images_root: str,
    store_url: str,
    *,
    split: SplitMethod | np.ndarray = "auto",
    split_seed: int = 0,
    chunk_rows: int | Literal["auto"] = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    backbone: BackboneName = "resnet50",
    weights: str | None = "imagenet",
    weights_seed: int = 0,
    device: str = "auto",
    dtype: Dtype = "float16",
    precision: Precision = "fp32",
    compile: bool = False,
    engine: Engine = "torch",
    preset: Preset = "default",
    resume: bool = True,
    strict: bool = False,
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
    io_threads: int = 8,
    storage_options: StorageOptions | None = None,
) -> ExtractionPlan:
    """Check a run and plan it, before any cluster starts or anything is written.

    Raises :class:`ImagesNotFoundError` when ``images_root`` does not exist, holds none of
    the metadata's images, or misses more than ``max_failed_fraction`` of them (or any, with
    ``strict``); :class:`WeightsUnavailableError` when the weights cannot be had (offline);
    :class:`StoreMismatchError` when the store exists with other settings (resume).
    Parameters are those of :func:`extract_features`.
    """
    if preset not in PRESETS:
        raise OptionError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if chunk_rows != "auto" and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise OptionError(f"chunk_rows must be a positive number of rows or 'auto', not {chunk_rows!r}")
    if not 0.0 <= max_failed_fraction <= 1.0:
        raise OptionError(f"max_failed_fraction must be within 0 and 1, not {max_failed_fraction!r}")
    overrides = PRESETS[preset]
    split = overrides.get("split", split) if isinstance(split, str) and split == "auto" else split
    preprocessing = Preprocessing(flip=overrides.get("flip", "none"))
    source = metadata if isinstance(metadata, str) else metadata.attrs.get("source", "the metadata")
    if isinstance(metadata, str):
        metadata = read_metadata(metadata, storage_options)
    fs, base = filesystem(images_root, storage_options)
    if not fs.exists(base):
        raise ImagesNotFoundError(f"the images folder {images_root} does not exist", root=images_root,
                                  expected=len(metadata))
    located = locate_images(images_root, storage_options, expected=metadata["image_index"])
    _check_images_found(located, len(metadata), source, strict, max_failed_fraction)
    rows, split_info = prepare_rows(metadata, split, seed=split_seed, archive_root=images_root,
                                    storage_options=storage_options)
    spec = BackboneSpec(name=backbone, weights=weights or "random", seed=weights_seed)
    check_weights_available(spec)
    from .synthetic import synthetic_settings

    archive = {"root": images_root, "synthetic": synthetic_settings(images_root, storage_options)
               is not None}
    plan = ExtractionPlan(
        rows=rows, urls=located.urls, missing=located.missing, images_root=images_root,
        store_url=store_url, storage_options=storage_options, spec=spec, identity=spec.identity(),
        preprocessing=preprocessing, split_info=split_info, split_seed=split_seed, archive=archive,
        chunk_rows=chunk_rows, batch_size=batch_size, dtype=dtype, precision=precision,
        compile=compile, engine=engine, device=device, resume=resume, strict=strict,
        max_failed_fraction=max_failed_fraction, io_threads=io_threads,
        store_exists=FeatureStore.exists(store_url, storage_options),
    )
    if resume and plan.store_exists:
        FeatureStore.open(store_url, storage_options).check_settings(_resume_settings(plan))
    return plan


def _check_images_found(located, expected: int, source: str, strict: bool,
                        max_failed_fraction: float) -> None:
    missing = located.missing
    found = expected - len(missing)
    details = dict(root=located.root, missing=missing, found=found, expected=expected)
    if not missing:
        return
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    if found == 0:
        raise ImagesNotFoundError(
            f"none of the {expected} images named in {source} is under {located.root} (looked "
            f"for {located.root}/images/*.png and {located.root}/images_###/images/*.png; "
            f"e.g. {shown}); is --images the archive's root folder?", **details)
    if strict:
        raise ImageDecodeError(missing[0], f"file not found under {located.root} "
                               f"({len(missing)} of {expected} images missing: {shown})")
    if len(missing) / expected > max_failed_fraction:
        raise ImagesNotFoundError(
            f"{len(missing)} of the {expected} images named in {source} are not under "
            f"{located.root} ({len(missing) / expected:.1%}, above the allowed "
            f"{max_failed_fraction:.1%}; e.g. {shown}). Complete the archive, or allow more "
            "failed rows (max_failed_fraction=, --max-failed-fraction)", **details)


def _resume_settings(plan: ExtractionPlan) -> dict:
    settings = {**plan.settings(), "n_rows": len(plan.rows),
                "rows_fingerprint": rows_fingerprint(plan.rows["image_index"])}
    if plan.chunk_rows != "auto":
        settings["chunk_rows"] = plan.chunk_rows
    return settings


def extract_features(
    metadata: pd.DataFrame | str,
    images_root: str,
    store_url: str,
    *,
    client=None,
    split: SplitMethod | np.ndarray = "auto",
    split_seed: int = 0,
    chunk_rows: int | Literal["auto"] = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    backbone: BackboneName = "resnet50",
    weights: str | None = "imagenet",
    weights_seed: int = 0,
    device: str = "auto",
    dtype: Dtype = "float16",
    precision: Precision = "fp32",
    compile: bool = False,
    engine: Engine = "torch",
    preset: Preset = "default",
    resume: bool = True,
    strict: bool = False,
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
    storage_options: StorageOptions | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    io_threads: int = 8,
    progress: bool = True,
    warmup: bool = True,
) -> ExtractSummary:
    """Run the frozen backbone over every image of ``metadata`` into the store at ``store_url``.

    ``metadata`` is a frame from :func:`read_metadata` or the CSV's URL. Everything that
    can be checked is checked first (:func:`plan_extraction`), before a cluster starts:
    ``client=None`` then starts a local cluster of ``n_workers`` processes for the run.
    Re-running resumes: chunks whose done marker is set are skipped. ``chunk_rows="auto"``
    gives every worker thread several tasks (at most 512 rows each); a resumed store keeps
    its own. Images that cannot be read are recorded (status failed, reason in the store)
    unless ``strict``, where the first stops the run; if more than ``max_failed_fraction``
    of the store's rows failed (or all of them), :class:`ExtractionFailedError` is raised
    after the run, with its summary. ``engine="onnxruntime"`` runs the backbone with ONNX
    Runtime (CPU, fp32; the ``onnx`` extra); the engine is recorded in the store.
    """
    plan = plan_extraction(
        metadata, images_root, store_url, split=split, split_seed=split_seed,
        chunk_rows=chunk_rows, batch_size=batch_size, backbone=backbone, weights=weights,
        weights_seed=weights_seed, device=device, dtype=dtype, precision=precision,
        compile=compile, engine=engine, preset=preset, resume=resume, strict=strict,
        max_failed_fraction=max_failed_fraction, io_threads=io_threads,
        storage_options=storage_options)
    return run_extraction(plan, client, n_workers=n_workers,
                          threads_per_worker=threads_per_worker, progress=progress, warmup=warmup)


def run_extraction(plan: ExtractionPlan, client=None, *, n_workers: int | None = None,
                   threads_per_worker: int = 1, progress: bool = True,
                   warmup: bool = True) -> ExtractSummary:
    """Run a checked :class:`ExtractionPlan` on ``client`` (or on a local cluster it starts).

    The store's writer lease is taken before the cluster starts, so a second run on the
    same store is refused at once.
    """
    with StoreLease(plan.store_url, plan.storage_options) as lease:
        if client is not None:
            return _execute(plan, client, lease, progress, warmup)
        from .cluster import local_client

        with local_client(n_workers=n_workers, threads_per_worker=threads_per_worker) as owned:
            return _execute(plan, owned, lease, progress, warmup)


def _store_name(url: str) -> str:
    """The store's last path part (``nih.zarr``): what a span is called after."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _worker_threads(client) -> int:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1


def _execute(plan: ExtractionPlan, client, lease: StoreLease, progress: bool,
             warmup: bool) -> ExtractSummary:
    store = _create_or_resume(plan, client, lease)
    config = TaskConfig(store_url=plan.store_url, storage_options=plan.storage_options,
                        backbone=plan.spec, preprocessing=plan.preprocessing, device=plan.device,
                        precision=plan.precision, compile=plan.compile, engine=plan.engine,
                        batch_size=plan.batch_size, io_threads=plan.io_threads, torch_threads=1,
                        flip_seed=plan.split_seed)
    summary = _run(client, store, plan.rows, plan.urls, config, plan.strict, progress, warmup)
    if summary.store_rows_failed and (summary.failed_fraction > plan.max_failed_fraction
                                      or summary.store_rows_failed == summary.store_rows_done):
        raise ExtractionFailedError(summary, plan.max_failed_fraction)
    return summary


def _create_or_resume(plan: ExtractionPlan, client, lease: StoreLease) -> FeatureStore:
    """Open the store to resume it (settings checked again, under the lease), or make it."""
    url, options = plan.store_url, plan.storage_options
    exists = FeatureStore.exists(url, options)
    if plan.resume and exists:
        store = FeatureStore.open(url, options, mode="r+")
        store.check_settings(_resume_settings(plan))
        return store
    chunk_rows = plan.chunk_rows if plan.chunk_rows != "auto" else auto_chunk_rows(
        len(plan.rows), _worker_threads(client), plan.batch_size)
    store = FeatureStore.create(url, plan.rows, chunk_rows=chunk_rows, storage_options=options,
                                overwrite=exists, extra={"archive": plan.archive},
                                **plan.settings())
    if exists:
        lease.acquire()  # overwriting cleared the store's folder, the lease with it: take it again
    return store


def _run(client, store: FeatureStore, rows: pd.DataFrame, urls: dict[str, str],
         config: TaskConfig, strict: bool, progress: bool, warmup: bool) -> ExtractSummary:
    from distributed import as_completed, span

    from .progress import progress_bar

    names = rows["image_index"].tolist()
    done = store.done_chunks()
    todo = [c for c in range(store.n_chunks) if not done[c]]
    flip_train = config.preprocessing.flip == "train"
    codes = rows["split"].to_numpy()
    link = getattr(client, "dashboard_link", None)
    started = time.perf_counter()
    warm_seconds = 0.0
    results: list[dict] = []
    install_counters(client)
    run_token = uuid.uuid4().hex
    with span(f"cxrdask-extract {_store_name(store.url)}") as span_id:
        if warmup and todo:
            workers = list(client.scheduler_info(n_workers=-1)["workers"])
            warm = [client.submit(warm_worker, config, workers=[w], pure=False,
                                  key=f"backbone-warmup-{i}-{run_token}")
                    for i, w in enumerate(workers)]
            client.gather(warm)
            warm_seconds = time.perf_counter() - started  # worker start-up, imports, model build
        args = []
        for chunk in todo:
            start, stop = store.chunk_bounds(chunk)
            chunk_names = names[start:stop]
            args.append((chunk, [urls.get(n) for n in chunk_names], chunk_names,
                         [flip_train and codes[r] == TRAIN and flip_for(n, config.flip_seed)
                          for r, n in zip(range(start, stop), chunk_names, strict=True)]))
        futures = [client.submit(extract_chunk, *a, config, pure=False,
                                 key=f"{CHUNK_PREFIX}-{a[0]}-{run_token}")
                   for a in args]
        total = sum(len(a[2]) for a in args)
        bar = progress_bar(total=total, unit="img", desc="extract", disable=not progress)
        try:
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                bar.update(result["images"])
                if strict and result["failures"]:
                    name, reason = result["failures"][0]
                    client.cancel(futures)
                    raise ImageDecodeError(name, reason)
        finally:
            bar.close()
    seconds = time.perf_counter() - started - warm_seconds
    failures = [f for r in results for f in r["failures"]]
    conversions = [c for r in results for c in r["conversions"]]
    timings = pd.DataFrame([{k: v for k, v in r.items() if k not in ("failures", "conversions")}
                            for r in results])
    status = store.array("status")[:]
    images_run = sum(r["images"] for r in results)
    measured = span_metrics(client, span_id, expect_images=images_run) if results else {}
    summary = ExtractSummary(
        store_url=store.url,
        rows_total=store.n_rows,
        rows_written=sum(r["ok"] for r in results),
        rows_failed=len(failures),
        chunks_total=store.n_chunks,
        chunks_skipped=store.n_chunks - len(todo),
        chunks_run=len(todo),
        seconds=seconds,
        warmup_seconds=warm_seconds,
        failures=failures,
        conversions=conversions,
        timings=timings,
        dashboard_link=link,
        split=store.provenance["split"].get("description", ""),
        chunk_rows=store.chunk_rows,
        store_rows_failed=int((status == STATUS_FAILED).sum()),
        store_rows_done=int((status != STATUS_PENDING).sum()),
        stage_seconds={stage: measured.get(stage, 0.0) for stage in STAGE_NAMES},
        span_id=span_id,
    )
    _record_run(store, summary)
    return summary


def _record_run(store: FeatureStore, summary: ExtractSummary) -> None:
    """Keep the run's outcome in the store: failed-row count and conversions (first 1,000)."""
    previous = store.provenance.get("conversions", [])
    conversions = (previous + [list(c) for c in summary.conversions])[:1000]
    store.update_provenance(
        failed_rows=len(store.failures()),
        conversions=conversions,
        complete=store.is_complete(),
        last_run={"chunks_run": summary.chunks_run, "chunks_skipped": summary.chunks_skipped,
                  "seconds": round(summary.seconds, 3),
                  "images_per_second": round(summary.images_per_second, 2)},
    )


__all__ = ["ExtractSummary", "ExtractionPlan", "TaskConfig", "auto_chunk_rows", "extract_features",
           "plan_extraction", "prepare_rows", "run_extraction"]
