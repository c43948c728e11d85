"""The client side of an extraction: check and plan a run, submit one task per store chunk,
follow its progress, and summarise it.

:func:`plan_extraction` checks everything it can before a cluster starts or a byte is
written; :func:`run_extraction` takes the store's writer lease, creates or resumes the
store and submits the chunk tasks of :mod:`cxrdask.extract.worker`;
:func:`extract_features` does both. Every choice is an :class:`~cxrdask.config.ExtractConfig`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cxrdask._fs import StorageOptions, filesystem
from cxrdask.backbones.engines import CPU_ENGINES, ENGINE_RULES
from cxrdask.backbones.hardware import cpu_auto_precision, has_no_gpu
from cxrdask.backbones.spec import BackboneSpec, check_weights_available
from cxrdask.config import (
    COMPILE_AUTO_MIN_IMAGES,
    DEFAULT_BATCH_SIZE,
    ExtractConfig,
    SplitMethod,
)
from cxrdask.errors import (
    ExtractionFailedError,
    ExtractionIncompleteError,
    FailedRowsError,
    ImageDecodeError,
    ImagesNotFoundError,
    MetadataError,
    OptionError,
    StoreMismatchError,
    StrictFailureError,
)
from cxrdask.extract.metrics import CHUNK_PREFIX, WARMUP_PREFIX, install_counters, span_metrics
from cxrdask.extract.resolve import Resolved, WorkerFacts, describe_auto_engine, local_engine, resolve
from cxrdask.extract.task_config import STAGE_NAMES, STAGES, TaskConfig
from cxrdask.extract.tasks import run_chunk, run_warmup, worker_hardware
from cxrdask.extract.worker_state import ExtractionWorkerPlugin
from cxrdask.imaging.preprocessing import CPU_INTERPOLATION, DEVICE_INTERPOLATION, Preprocessing, flip_for
from cxrdask.store.lease import StoreLease

if TYPE_CHECKING:
    import pandas as pd

    from cxrdask.progress import Progress
    from cxrdask.store.features import FeatureSettings, FeatureStore
    from cxrdask.store.rows import RowStore

MAX_AUTO_CHUNK_ROWS = 512
TASK_RETRIES = 2  # Dask re-runs a chunk task that raised (a failed write) this many times
TASKS_PER_THREAD = 4  # tasks per worker thread that chunk_rows="auto" aims for


@dataclass
class ExtractSummary:
    """What an extraction did: rows written and failed, chunks run and skipped, speed, stage times.

    Attributes
    ----------
    rows_written, rows_failed : int
        This run's rows.
    store_rows_failed, store_rows_done : int
        The whole store's failed and written rows (earlier runs included).
    chunks_total, chunks_run, chunks_skipped : int
        Chunks of the store, run now, skipped as done (after their checksums were checked).
    chunks_damaged : list of int
        Chunks an earlier run marked done that failed their checksums (or lost their data)
        when this run read them; they were recomputed (and are among ``chunks_run``).
    seconds, warmup_seconds : float
        The run's time after the workers' model warm-up, and the warm-up (the workers'
        start-up, imports and model build).
    failures : list of (str, str)
        Image index and reason of each failed row of this run.
    retriable : list of (str, str)
        Rows left unread by transient storage failures (their chunks are not done: the next
        run reads them), with the last error.
    stage_seconds : dict of str to float
        Seconds per stage over every worker, read back from the dashboard's fine performance
        metrics of the run's span (``span_id``).
    timings : pandas.DataFrame
        One row per chunk task: worker, images and seconds per stage.
    precision : str
        The backbone's arithmetic this run used (``precision="auto"`` made concrete).
    compiled : bool
        Whether the backbone was compiled (``compile="auto"`` made concrete).
    engine : str
        What ran the backbone: ``torch``, ``onnxruntime`` or ``openvino``
        (``engine="auto"`` made concrete).
    """

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
    timings: pd.DataFrame = field(default_factory=lambda: _frame([]), repr=False)
    dashboard_link: str | None = None
    split: str = ""
    chunk_rows: int = 0
    retriable: list[tuple[str, str]] = field(default_factory=list)  # read again by the next run
    store_rows_failed: int = 0  # failed rows in the whole store, earlier runs included
    store_rows_done: int = 0  # rows of the store that are written (ok or failed)
    # Seconds per stage over every worker, read back from the scheduler's fine performance
    # metrics of this run's span (what the dashboard shows); empty when nothing ran.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    span_id: str | None = None
    precision: str = ""  # the backbone's arithmetic ("auto" made concrete); "" for a cache pass
    compiled: bool = False  # whether the backbone was torch.compile'd ("auto" made concrete)
    engine: str = ""  # torch, onnxruntime or openvino ("auto" made concrete); "" for a cache pass
    # Chunks marked done by an earlier run that failed their checksums (or lost their data)
    # when this run checked them, and were recomputed.
    chunks_damaged: list[int] = field(default_factory=list)

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
            f"chunks: {self.chunks_run} run, {self.chunks_skipped} skipped as already done"
            + (" (their checksums checked)" if self.chunks_skipped else "")
            + f", {self.chunks_total} in all ({self.chunk_rows} rows each)"
            + (f"; {len(self.chunks_damaged)} found damaged and recomputed: {self.chunks_damaged}"
               if self.chunks_damaged else ""),
            f"rows: {self.rows_written} written, {self.rows_failed} failed "
            f"(of {self.rows_total} in the store)",
            f"time: {self.seconds:.1f} s ({self.images_per_second:.1f} images/s"
            + (f", {self.precision}" if self.precision else "")
            + (", compiled" if self.compiled else "")
            + (f", {self.engine}" if self.engine else "")
            + f"), model warm-up {self.warmup_seconds:.1f} s",
        ]
        if self.retriable:
            lines.append(f"rows to read again (transient storage failures, chunks not done): "
                         f"{len(self.retriable)}, e.g. {self.retriable[0][0]}: {self.retriable[0][1]}")
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


# --------------------------------------------------------------------------- client side


def _frame(records: list[dict]) -> pd.DataFrame:
    """A DataFrame of ``records``. pandas is imported here, at a call, not with this module:
    ``extract_features`` starts its cluster first and imports pandas (0.5 s on one core)
    to read the metadata while the worker processes start."""
    import pandas as pd

    return pd.DataFrame(records)


def prepare_rows(metadata: pd.DataFrame, split: SplitMethod | np.ndarray = "auto", *, seed: int = 0,
                 archive_root: str | None = None,
                 storage_options: StorageOptions | None = None) -> tuple[pd.DataFrame, dict]:
    """Rows in store order (train, then validation, then test) with a ``split`` column.

    Contiguous splits mean that training reads only training chunks.
    """
    from cxrdask.archive.splits import assign_splits

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
    """A run checked before it starts: its rows, where each image is, the backbone, the store.

    :func:`plan_extraction` makes it without starting a cluster or writing anything, so every
    mistake it can find (a wrong images root, missing images, unavailable weights, a store
    made with other settings) is reported before any work starts; :func:`run_extraction`
    runs it.

    Attributes
    ----------
    config : ExtractConfig
        Every choice of the run.
    rows : pandas.DataFrame
        The rows in store order, with their ``split`` codes.
    urls : dict of str to str
        Each image's URL, by image index.
    missing : list of str
        Image indices of the metadata not found under the images root.
    store_exists : bool
        Whether a store is already at ``store_url`` (resumed unless ``config.resume`` is False).
    pixels_url : str or None
        A pixel store: read instead of the images (``pixels_role="source"``), or written
        beside the features (``"write"``; with ``store_url`` None, that is the whole run).
    """

    config: ExtractConfig
    rows: pd.DataFrame
    urls: dict[str, str]
    missing: list[str]
    images_root: str
    store_url: str | None
    storage_options: StorageOptions | None
    spec: BackboneSpec
    identity: dict
    preprocessing: Preprocessing
    split_info: dict
    archive: dict
    store_exists: bool
    pixels_url: str | None = None
    pixels_role: Literal["none", "source", "write"] = "none"
    chunk_rows: int | None = None  # fixed by an existing pixel store; else from the config
    resolved: Resolved | None = None  # the concrete arithmetic, once the workers are known

    def settings(self) -> FeatureSettings:
        """The settings recorded in the store, which a resumed run must match."""
        from cxrdask.store.features import FeatureSettings

        c = self.config
        return FeatureSettings(backbone=self.identity, preprocessing=self.preprocessing.to_dict(),
                               dtype=c.dtype, precision=c.precision,  # type: ignore[arg-type]
                               compile=c.compile is True, engine=c.engine,  # type: ignore[arg-type]
                               split=self.split_info)

    def local_layout(self) -> tuple[int, int] | None:
        """The layout of a local cluster started for this plan when none is asked for
        (:func:`local_layout`; None for a cache pass, which runs no backbone)."""
        return local_layout(self.config) if self.store_url is not None else None

    def describe(self) -> str:
        """Lines for the user before the run: images found, split, backbone, the store."""
        c = self.config
        n = len(self.rows)
        found = n - len(self.missing)
        if self.pixels_role == "source":
            lines = [f"images: {n} rows of the pixel store {self.pixels_url}"]
        else:
            lines = [f"images: {found} of {n} found under {self.images_root}"
                     + (f" ({len(self.missing)} missing, e.g. {self.missing[0]}: they will be "
                        "recorded as failed rows)" if self.missing else "")]
        lines.append(f"split: {self.split_info.get('description', '')}")
        if self.store_url is not None:
            precision = ("precision auto (bf16 where the workers compute it natively, else "
                         "fp32)") if c.precision == "auto" else c.precision
            engine = f"engine auto ({describe_auto_engine()})" if c.engine == "auto" \
                else c.engine
            compiled = (f", compiled if PyTorch fp32 and each worker thread gets "
                        f"{COMPILE_AUTO_MIN_IMAGES:,} images or more (CPU workers)") \
                if c.compile == "auto" and c.engine in ("auto", "torch") \
                else ", compiled" if c.compile is True else ""
            lines.append(f"backbone: {self.identity['name']} ({self.identity['weights']}), "
                         f"{engine}, {precision}{compiled}, features as {c.dtype}")
            state = "resumed (finished chunks are skipped)" if c.resume and self.store_exists \
                else "new" if not self.store_exists else "overwritten"
            lines.append(f"store: {self.store_url} ({state})")
        if self.pixels_url is not None:
            role = "images read from" if self.pixels_role == "source" else "decoded images kept in"
            lines.append(f"pixels: {role} {self.pixels_url} "
                         f"({self.preprocessing.interpolation} to {self.preprocessing.size}²)")
        return "\n".join(lines)


def plan_extraction(
    metadata: pd.DataFrame | str | None,
    images_root: str,
    store_url: str,
    config: ExtractConfig | None = None,
    *,
    storage_options: StorageOptions | None = None,
    split_codes: np.ndarray | None = None,
    pixels: str | None = None,
    **options: Any,
) -> ExtractionPlan:
    """Check a run and plan it, before any cluster starts or anything is written.

    Parameters
    ----------
    metadata
        A frame from :func:`~cxrdask.archive.kinds.read_archive` (any archive kind) or
        :func:`~cxrdask.archive.metadata.read_metadata` (NIH); the metadata or label file's
        URL; or None: the archive under ``images_root`` is detected and read.
    images_root
        The archive's root folder (or URL): NIH's (``images/`` or Kaggle's
        ``images_###/images/``), or any kind :func:`~cxrdask.archive.kinds.read_archive` reads.
    store_url
        Where the feature store is (or will be): a folder or any fsspec URL.
    config
        Every choice of the run; :class:`~cxrdask.config.ExtractConfig` defaults if None.
    storage_options
        fsspec options for every URL (credentials, endpoints).
    split_codes
        Split codes per metadata row (0 train, 1 validation, 2 test) instead of
        ``config.split``.
    pixels
        Also keep the decoded, resized images in a pixel store at this URL (made, or
        resumed), for later extractions with :func:`plan_from_pixels`.
    **options
        Fields of :class:`~cxrdask.config.ExtractConfig` that replace those of ``config``
        (``weights="random"``, ``chunk_rows=32``, ...).

    Returns
    -------
    ExtractionPlan
        The rows in store order, the image URLs, the backbone and the store's settings.

    Raises
    ------
    ImagesNotFoundError
        ``images_root`` does not exist, holds none of the metadata's images, or misses more
        than ``max_failed_fraction`` of them.
    ImageDecodeError
        With ``strict``, any image is missing.
    WeightsUnavailableError
        The weights cannot be had (offline and not cached, or a missing file).
    StoreMismatchError
        The store exists, is to be resumed, and was made with other settings.
    OptionError
        An option has a value cxrdask does not accept.
    """
    config = ExtractConfig.with_options(config, **options)
    _check_write_targets(storage_options, _inputs(metadata, images_root), store=store_url,
                         pixels=pixels)
    plan = _plan_images(metadata, images_root, store_url, config, storage_options, split_codes)
    if pixels is not None:
        plan.pixels_url, plan.pixels_role = pixels, "write"
        plan.chunk_rows = _check_pixels_to_write(plan)
    return plan


def _plan_images(metadata: pd.DataFrame | str | None, images_root: str, store_url: str | None,
                 config: ExtractConfig, storage_options: StorageOptions | None,
                 split_codes: np.ndarray | None) -> ExtractionPlan:
    """The checks and plan of a run that reads the images (``store_url`` None: pixels only)."""
    from cxrdask.archive.kinds import locate_archive_images, read_archive
    from cxrdask.archive.metadata import locate_images
    from cxrdask.store.features import FeatureStore

    preprocessing = _preprocessing(config)
    if metadata is None or isinstance(metadata, str):
        metadata = read_archive(images_root, metadata=metadata, storage_options=storage_options)
    assert not isinstance(metadata, str)
    source = metadata.attrs.get("source", "the metadata")
    if metadata.empty:  # before a cluster starts, a lease is taken or a folder made
        raise MetadataError(str(source), message=f"{source}: no rows to extract (the metadata, "
                            "after its filters, is empty)")
    fs, base = filesystem(images_root, storage_options)
    if not fs.exists(base):
        raise ImagesNotFoundError(f"the images folder {images_root} does not exist", root=images_root,
                                  expected=len(metadata))
    if "path" in metadata.columns:  # every kind but NIH says where each image is
        from cxrdask.imaging.dicom import check_dicom_reader

        check_dicom_reader(metadata["path"])  # before any listing or worker
        located = locate_archive_images(metadata, images_root, storage_options)
    else:
        located = locate_images(images_root, storage_options, expected=metadata["image_index"])
    _check_images_found(located, len(metadata), source, config.strict, config.max_failed_fraction)
    rows, split_info = prepare_rows(
        metadata, config.split_method if split_codes is None else split_codes,
        seed=config.split_seed, archive_root=images_root, storage_options=storage_options)
    spec = BackboneSpec(name=config.backbone, weights=config.weights or "random",
                        seed=config.weights_seed)
    check_weights_available(spec)
    from cxrdask.archive.synthetic import synthetic_settings

    archive = {"root": images_root, "kind": metadata.attrs.get("archive", "nih"),
               "synthetic": synthetic_settings(images_root, storage_options) is not None}
    plan = ExtractionPlan(
        config=config, rows=rows, urls=located.urls, missing=located.missing,
        images_root=images_root, store_url=store_url, storage_options=storage_options, spec=spec,
        identity=spec.identity(), preprocessing=preprocessing, split_info=split_info,
        archive=archive,
        store_exists=store_url is not None and FeatureStore.exists(store_url, storage_options),
    )
    if store_url is not None and config.resume and plan.store_exists:
        plan = _check_resumable(plan, FeatureStore.open(store_url, storage_options))
    return plan


def _inputs(metadata: pd.DataFrame | str | None, images_root: str) -> dict[str, str | None]:
    """What a run reads, which no store it writes may be, lie inside or contain."""
    source = metadata if isinstance(metadata, str) or metadata is None else metadata.attrs.get("source")
    return {"the images folder": images_root,
            "the metadata CSV": source if isinstance(source, str) else None}


def _check_write_targets(storage_options: StorageOptions | None, inputs: dict[str, str | None], *,
                         store: str | None = None, pixels: str | None = None) -> None:
    """Every store the run writes is a folder of its own, apart from what it reads and from
    each other (:func:`~cxrdask.store.targets.check_store_target`): checked before anything
    is read at length or written, so a mistaken ``--store`` never harms the archive."""
    from cxrdask.store.targets import check_store_target

    if store is not None:
        check_store_target(store, "features", what="the store",
                           inputs={**inputs, "the pixel store": pixels},
                           storage_options=storage_options)
    if pixels is not None:
        check_store_target(pixels, "pixels", what="the pixel store", inputs=inputs,
                           storage_options=storage_options)


def _preprocessing(config: ExtractConfig) -> Preprocessing:
    """The store's preprocessing: the config's, with what the backbone fixes (a
    torchxrayvision network's size, normalisation, channel and crop); an ``image_size``
    other than the default and the network's own is refused."""
    interpolation = DEVICE_INTERPOLATION if config.resize == "device" else CPU_INTERPOLATION
    own = BackboneSpec(name=config.backbone, weights="random").preprocessing()
    fixed = own.pop("fixed_size", False)
    default = ExtractConfig().image_size
    if fixed and config.image_size not in (default, own["size"]):
        raise OptionError(f"{config.backbone} takes {own['size']}-pixel images (its own "
                          f"preprocessing), not image_size={config.image_size}")
    if config.image_size != default and not fixed:
        own["size"] = config.image_size
    return Preprocessing(**{"size": config.image_size, **own}, flip=config.flip,
                         interpolation=interpolation)


def _check_pixels_to_write(plan: ExtractionPlan) -> int | None:
    """An existing pixel store to be resumed must hold these rows, made with these settings;
    its chunk size is then the run's. Returns that chunk size (None: a new pixel store)."""
    from cxrdask.store.features import FeatureStore, rows_fingerprint
    from cxrdask.store.pixels import PixelStore

    assert plan.pixels_url is not None
    if not (plan.config.resume and PixelStore.exists(plan.pixels_url, plan.storage_options)):
        return None
    existing = PixelStore.open(plan.pixels_url, plan.storage_options)
    existing.check_pixel_settings(plan.preprocessing.to_dict())
    _check_strict_resume(existing, plan.config)
    wanted = {"n_rows": len(plan.rows), "rows_fingerprint": rows_fingerprint(plan.rows["image_index"]),
              "split": plan.split_info}
    if plan.config.chunk_rows != "auto":
        wanted["chunk_rows"] = plan.config.chunk_rows
    existing.check_settings(wanted)
    if plan.store_exists and plan.config.resume and plan.store_url is not None:
        store = FeatureStore.open(plan.store_url, plan.storage_options)
        if store.chunk_rows != existing.chunk_rows:
            raise OptionError(f"the feature store {plan.store_url} has chunks of {store.chunk_rows} "
                              f"rows and the pixel store {plan.pixels_url} of "
                              f"{existing.chunk_rows}: write the pixels to a new store")
    return existing.chunk_rows


def plan_from_pixels(
    pixels: str,
    store_url: str,
    config: ExtractConfig | None = None,
    *,
    storage_options: StorageOptions | None = None,
    **options: Any,
) -> ExtractionPlan:
    """Plan an extraction that reads a pixel store instead of the images.

    The feature store gets the pixel store's rows, order, split and chunking; its
    provenance records the pixel store and the decode and resize settings the pixels were
    made with. Checked before any cluster starts, as :func:`plan_extraction`.

    Parameters
    ----------
    pixels
        The pixel store (``cxrdask cache``, or ``extract --pixels``).
    store_url
        The feature store to make or resume.
    config, storage_options, **options
        As for :func:`plan_extraction`. ``resize`` must be the pixel store's; ``split`` and
        ``chunk_rows`` are the pixel store's.

    Raises
    ------
    StoreNotFoundError
        No pixel store at ``pixels``.
    StoreMismatchError
        The pixel store was resized otherwise than ``config.resize`` asks, or the feature
        store exists, is to be resumed, and was made with other settings.
    WeightsUnavailableError, OptionError
        As for :func:`plan_extraction`.
    """
    from cxrdask.store.features import FeatureStore
    from cxrdask.store.pixels import PixelStore

    config = ExtractConfig.with_options(config, **options)
    _check_write_targets(storage_options, {"the pixel store it reads": pixels}, store=store_url)
    source = PixelStore.open(pixels, storage_options)
    preprocessing = _preprocessing(config)
    source.check_pixel_settings(preprocessing.to_dict())
    if config.chunk_rows not in ("auto", source.chunk_rows):
        raise OptionError(f"chunk_rows {config.chunk_rows} asked for, but the pixel store {pixels} "
                          f"has chunks of {source.chunk_rows} rows (the feature store takes its "
                          "chunking); leave chunk_rows at auto")
    spec = BackboneSpec(name=config.backbone, weights=config.weights or "random",
                        seed=config.weights_seed)
    check_weights_available(spec)
    archive = dict(source.provenance.get("source", {}))
    archive["pixels"] = {"url": pixels, "rows_fingerprint": source.provenance["rows_fingerprint"],
                         "created": source.provenance.get("created")}
    plan = ExtractionPlan(
        config=config, rows=source.metadata_table(), urls={}, missing=[],
        images_root=str(archive.get("root", "")), store_url=store_url,
        storage_options=storage_options, spec=spec, identity=spec.identity(),
        preprocessing=preprocessing, split_info=source.provenance.get("split", {}),
        archive=archive, store_exists=FeatureStore.exists(store_url, storage_options),
        pixels_url=pixels, pixels_role="source", chunk_rows=source.chunk_rows,
    )
    if config.resume and plan.store_exists:
        plan = _check_resumable(plan, FeatureStore.open(store_url, storage_options),
                                chunk_rows=source.chunk_rows)
    return plan


def plan_cache(
    metadata: pd.DataFrame | str | None,
    images_root: str,
    pixels: str,
    config: ExtractConfig | None = None,
    *,
    storage_options: StorageOptions | None = None,
    split_codes: np.ndarray | None = None,
    **options: Any,
) -> ExtractionPlan:
    """Plan a pass that only decodes and resizes the images into a pixel store (no backbone).

    Checked like :func:`plan_extraction` (images found, an existing pixel store's settings)
    before any cluster starts. Run it with :func:`run_extraction`.
    """
    options.setdefault("weights", "random")  # no backbone runs: nothing to download
    config = ExtractConfig.with_options(config, **options)
    _check_write_targets(storage_options, _inputs(metadata, images_root), pixels=pixels)
    plan = _plan_images(metadata, images_root, None, config, storage_options, split_codes)
    plan.pixels_url, plan.pixels_role = pixels, "write"
    plan.chunk_rows = _check_pixels_to_write(plan)
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


def _check_resumable(plan: ExtractionPlan, existing: FeatureStore, **wanted: Any) -> ExtractionPlan:
    """The plan for resuming ``existing``, checked against its settings before any work
    starts. ``precision``, ``compile`` and ``engine`` ``"auto"`` become the store's own: its
    features were made with them."""
    c = plan.config
    if c.precision == "auto":
        c = replace(c, precision=existing.provenance.get("precision", "fp32"))
    if c.compile == "auto":
        c = replace(c, compile=bool(existing.provenance.get("compile", False)))
    if c.engine == "auto":  # stores written before the setting existed ran PyTorch
        made_with = existing.provenance.get("engine", "torch")
        if made_with not in ENGINE_RULES:  # a retired engine (torchscript): say so, by name
            raise StoreMismatchError(existing.url, {"engine": (
                made_with, f"one this release has ({', '.join(ENGINE_RULES)}); the "
                f"{made_with} engine was retired: start the store afresh (--overwrite)")})
        c = replace(c, engine=made_with)
    plan = replace(plan, config=c)
    existing.check_settings({**_resume_settings(plan), **wanted})
    _check_strict_resume(existing, c)
    return plan


def _check_strict_resume(existing: RowStore, config: ExtractConfig) -> None:
    """A strict run refuses to resume a store holding failed rows (unless it reads them
    again, ``retry_failed``): skipping their chunks as done would let it pass."""
    if not config.strict or config.retry_failed:
        return
    failures = existing.failures()
    if not failures.empty:
        raise FailedRowsError(existing.url, list(zip(failures["image_index"], failures["reason"],
                                                     strict=True)))


def _resume_settings(plan: ExtractionPlan) -> dict:
    from cxrdask.store.features import rows_fingerprint

    settings = {**plan.settings().to_dict(), "n_rows": len(plan.rows),
                "rows_fingerprint": rows_fingerprint(plan.rows["image_index"])}
    if plan.config.chunk_rows != "auto":
        settings["chunk_rows"] = plan.config.chunk_rows
    return settings


def extract_features(
    metadata: pd.DataFrame | str | None,
    images_root: str,
    store_url: str,
    config: ExtractConfig | None = None,
    *,
    client=None,
    storage_options: StorageOptions | None = None,
    pixels: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    progress: Progress = True,
    **options: Any,
) -> ExtractSummary:
    """Run the frozen backbone over every image of ``metadata`` into the store at ``store_url``.

    Everything that can be checked is checked first (:func:`plan_extraction`), before
    anything is written; with no ``client``, the session's cluster starts meanwhile, so a
    good run does not wait for it. Re-running resumes: chunks whose done marker is set are
    skipped. Images that cannot be read are recorded (status failed, reason in the store)
    unless ``strict``.

    Parameters
    ----------
    metadata, images_root, store_url, config, storage_options, pixels, **options
        As for :func:`plan_extraction` (custom ``split_codes``: plan with it, then
        :func:`run_extraction`): ``extract_features(meta, root, "f.zarr",
        weights="random")`` or ``extract_features(meta, root, "f.zarr", ExtractConfig(...))``;
        ``pixels="p.zarr"`` also keeps the decoded images for :func:`extract_from_pixels`.
    client
        A Dask client; None runs on :func:`~cxrdask.extract.cluster.session_client`: the current
        Dask client if there is one (and no layout is asked for), else a local cluster of
        ``n_workers`` processes with ``threads_per_worker`` threads each, kept for the
        Python session so the next call starts warm. With no layout asked for: one
        single-threaded process per core, or one process with a thread per core where the
        backbone will run on ONNX Runtime, on OpenVINO or in bf16 on eager PyTorch
        (:func:`local_layout`).
    progress
        True: a progress bar (tqdm: widgets in a notebook, text elsewhere); False: none; or
        an ``fsspec.callbacks.Callback`` of your own, sized to the images, updated as chunks
        land.

    Returns
    -------
    ExtractSummary
        Rows written and failed, chunks run and skipped, speed, seconds per stage.

    Raises
    ------
    ExtractionFailedError
        After the run, when more than ``max_failed_fraction`` of the store's rows (or all of
        them) failed; it carries the summary, and what was written is kept.
    ImagesNotFoundError, WeightsUnavailableError, StoreMismatchError, OptionError
        Before any work, as for :func:`plan_extraction`.
    StoreLockedError
        Another run holds the store's writer lease.
    """
    plan, client = _plan_while_cluster_starts(
        lambda: plan_extraction(metadata, images_root, store_url, config,
                                storage_options=storage_options, pixels=pixels,
                                **options),
        client, n_workers, threads_per_worker,
        local_layout(ExtractConfig.with_options(config, **options)))
    return run_extraction(plan, client, n_workers=n_workers,
                          threads_per_worker=threads_per_worker, progress=progress)


def extract_from_pixels(
    pixels: str,
    store_url: str,
    config: ExtractConfig | None = None,
    *,
    client=None,
    storage_options: StorageOptions | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    progress: Progress = True,
    **options: Any,
) -> ExtractSummary:
    """Run a backbone over the images of a pixel store (no PNG decoding) into ``store_url``.

    The feature store gets the pixel store's rows, split and chunks; any backbone, weights
    or precision. Arguments as for :func:`extract_features` and :func:`plan_from_pixels`.
    """
    plan, client = _plan_while_cluster_starts(
        lambda: plan_from_pixels(pixels, store_url, config, storage_options=storage_options,
                                 **options),
        client, n_workers, threads_per_worker,
        local_layout(ExtractConfig.with_options(config, **options)))
    return run_extraction(plan, client, n_workers=n_workers,
                          threads_per_worker=threads_per_worker, progress=progress)


def cache_pixels(
    metadata: pd.DataFrame | str | None,
    images_root: str,
    pixels: str,
    config: ExtractConfig | None = None,
    *,
    client=None,
    storage_options: StorageOptions | None = None,
    split_codes: np.ndarray | None = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    progress: Progress = True,
    **options: Any,
) -> ExtractSummary:
    """Decode and resize every image of ``metadata`` once, into a pixel store at ``pixels``.

    No backbone runs; later extractions read the store with :func:`extract_from_pixels`.
    Resumable, leased and checked like :func:`extract_features` (whose arguments these are).
    """
    plan, client = _plan_while_cluster_starts(
        lambda: plan_cache(metadata, images_root, pixels, config, storage_options=storage_options,
                           split_codes=split_codes, **options),
        client, n_workers, threads_per_worker)
    return run_extraction(plan, client, n_workers=n_workers,
                          threads_per_worker=threads_per_worker, progress=progress)


def local_layout(config: ExtractConfig) -> tuple[int, int] | None:
    """The layout of a local cluster started for this extraction when none is asked for:
    one process with a thread per core where its backbone will run on this machine's CPU on
    ONNX Runtime or OpenVINO, or on eager PyTorch in bf16
    (:func:`~cxrdask.extract.resolve.local_engine`; engine ``auto`` makes bf16 OpenVINO only once
    the job is known, on the same layout); else None, one single-threaded process per core:
    where a GPU may run it, where it may be compiled (each thread would compile a graph of its
    own), and for eager fp32 PyTorch.

    Measured with ``benchmarks/bench_extract.py`` (ResNet50, batch 8, 2 cores, images/s;
    one process x 2 threads against two single-threaded processes): ONNX Runtime fp32 19.2
    against 17.6 (machine A); eager bf16 28.3 and 26.7 against 25.8 and 26.6, in 0.09
    against 0.12 CPU s per image and half the memory (AMD EPYC with native bf16); eager fp32
    12.6 against 14.6 (machine A). One process also starts one interpreter, imports torch
    once and builds one model: its first chunk was written 0.3-0.5 s sooner on 2 cores."""
    cores = os.cpu_count() or 1
    engine = local_engine(config)
    if engine in CPU_ENGINES:
        return 1, cores
    precision = cpu_auto_precision() if config.precision == "auto" else config.precision
    on_cpu = config.device == "cpu" or (config.device == "auto" and has_no_gpu())
    # compile="auto" never compiles bf16 (compile_pays_off).
    if engine == "torch" and on_cpu and precision == "bf16" and config.compile is not True:
        return 1, cores
    return None


def _plan_while_cluster_starts(plan: Callable[[], ExtractionPlan], client,
                               n_workers: int | None, threads_per_worker: int,
                               default_layout: tuple[int, int] | None = None
                               ) -> tuple[ExtractionPlan, Any]:
    """``plan()``, and the client to run it on: ``client`` if given, else the session's, whose
    local cluster (of ``default_layout`` where no layout is asked for) starts in a thread
    while ``plan()`` runs.

    Planning reads and checks the metadata, lists the images and checks the weights (1.5 s
    for the whole archive on a local disk, more on S3); starting a cluster takes as long,
    and its workers then import torch (2 s). Neither needs the other, so they overlap. When
    planning fails, its error is raised once the cluster is up (never a half-started
    one); the cluster is the session's, kept for the next call like any other.
    """
    if client is not None:
        return plan(), client
    from concurrent.futures import ThreadPoolExecutor

    from cxrdask.extract.cluster import session_client

    # Leaving the pool waits for the start, also when planning raised: no half-started
    # cluster is left behind the plan's error.
    with ThreadPoolExecutor(1, thread_name_prefix="cxrdask-cluster-start") as pool:
        started = pool.submit(session_client, n_workers, threads_per_worker,
                              default_layout=default_layout)
        planned = plan()
    return planned, started.result()


def run_extraction(plan: ExtractionPlan, client=None, *, n_workers: int | None = None,
                   threads_per_worker: int = 1, progress: Progress = True) -> ExtractSummary:
    """Run a checked :class:`ExtractionPlan` on ``client``, or on a local cluster it starts.

    The store's writer lease is taken before the cluster starts (and before any work on a
    given client), so a second run on the same store is refused at once.

    Parameters
    ----------
    plan
        From :func:`plan_extraction`.
    client
        A Dask client; None runs on :func:`~cxrdask.extract.cluster.session_client` (the current
        client, else a local cluster kept for the Python session).
    n_workers, threads_per_worker
        The local cluster's layout (default: one single-threaded process per core).
    progress
        True: a progress bar (tqdm: widgets in a notebook, text elsewhere); False: none; or
        an ``fsspec.callbacks.Callback`` of your own, sized to the images, updated as chunks
        land.

    Every worker builds its backbone (and warms it) before the chunks are submitted.

    Returns
    -------
    ExtractSummary

    Raises
    ------
    ExtractionFailedError
        More than ``max_failed_fraction`` of the store's rows (or all) failed.
    StoreLockedError
        Another run holds the store's writer lease.
    """
    with contextlib.ExitStack() as stack:
        # One writer per store: the feature store's lease, and the pixel store's where it is
        # written too, both taken before the cluster starts.
        leases = [stack.enter_context(StoreLease(url, plan.storage_options))
                  for url in _written_urls(plan)]
        if client is None:
            from cxrdask.extract.cluster import session_client

            client = session_client(n_workers, threads_per_worker,
                                    default_layout=plan.local_layout())
        return _execute(plan, client, leases, progress)


def _written_urls(plan: ExtractionPlan) -> list[str]:
    urls = [plan.store_url] if plan.store_url is not None else []
    if plan.pixels_role == "write" and plan.pixels_url is not None:
        urls.append(plan.pixels_url)
    return urls


def _store_name(url: str) -> str:
    """The store's last path part (``nih.zarr``): what a span is called after."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _worker_threads(client) -> int:
    """Threads of the cluster's workers, asked of the scheduler (``Client.nthreads``).

    Not ``Client.scheduler_info()["workers"]``: that reads a cache which the client's
    periodic refresh overwrites every 2 s with an identity that lists no workers, and a
    refresh landing between the fetch and the read gave an empty list (seen in CI: the
    first call sent no warm-up)."""
    return sum(client.nthreads().values()) or 1


def _execute(plan: ExtractionPlan, client, leases: list[StoreLease], progress: Progress,
             ) -> ExtractSummary:
    plan = _resolve_auto(plan, client)
    c = plan.config
    stores = _create_or_resume(plan, client)
    task = TaskConfig(store_url=plan.store_url, storage_options=plan.storage_options,
                      backbone=plan.spec, preprocessing=plan.preprocessing, device=c.device,
                      precision=c.precision, compile=c.compile is True, engine=c.engine,
                      batch_size=c.batch_size, io_threads=c.io_threads, torch_threads=1,
                      flip_seed=c.split_seed, pixels_url=plan.pixels_url,
                      pixels_role=plan.pixels_role, read_retries=c.read_retries,
                      leases=tuple((lease.url, lease.token) for lease in leases))
    client.register_plugin(ExtractionWorkerPlugin())  # this run's worker state; the last one's goes
    summary = _run(client, stores, plan.rows, plan.urls, task, c, progress)
    if summary.retriable:
        raise ExtractionIncompleteError(summary)
    if summary.store_rows_failed and (summary.failed_fraction > c.max_failed_fraction
                                      or summary.store_rows_failed == summary.store_rows_done):
        raise ExtractionFailedError(summary, c.max_failed_fraction)
    return summary


def _resolve_auto(plan: ExtractionPlan, client) -> ExtractionPlan:
    """The plan with ``precision``, ``engine`` and ``compile`` made concrete by
    :func:`~cxrdask.extract.resolve.resolve` before a new store records them (a resumed
    store's were taken from it at planning, :func:`_check_resumable`). The facts are asked of
    the workers, which may be other machines than the client's; a worker lost meanwhile
    answers with its error, not at all: the others decide."""
    c = plan.config
    if plan.store_url is None:  # a cache pass runs no backbone
        return replace(plan, config=replace(c, compile=False if c.compile == "auto" else c.compile,
                                            engine="torch" if c.engine == "auto" else c.engine))
    if "auto" not in (c.precision, c.compile, c.engine):
        return replace(plan, resolved=resolve(c, [], len(plan.rows), 1))
    answers = client.run(worker_hardware, c.device, c.engine, on_error="return").values()
    facts = [WorkerFacts.from_answer(a) for a in answers if isinstance(a, dict)]
    resolved = resolve(c, facts, len(plan.rows), _worker_threads(client))
    return replace(plan, resolved=resolved,
                   config=replace(c, precision=resolved.precision, engine=resolved.engine,
                                  compile=resolved.compile))


def _create_or_resume(plan: ExtractionPlan, client) -> list[RowStore]:
    """The stores the run writes (the feature store first), opened to resume them (settings
    checked again, under the lease) or made."""
    from cxrdask.store.features import FeatureStore
    from cxrdask.store.pixels import PixelStore

    c = plan.config
    options = plan.storage_options
    chunk_rows = plan.chunk_rows
    if chunk_rows is None:
        chunk_rows = c.chunk_rows if c.chunk_rows != "auto" else auto_chunk_rows(
            len(plan.rows), _worker_threads(client), c.batch_size)
    stores: list[RowStore] = []
    for url in _written_urls(plan):
        pixels = url == plan.pixels_url and plan.pixels_role == "write"
        kind = PixelStore if pixels else FeatureStore
        exists = kind.exists(url, options)
        if c.resume and exists:
            store = kind.open(url, options, mode="r+")
            if isinstance(store, PixelStore):
                store.check_pixel_settings(plan.preprocessing.to_dict())
            else:
                store.check_settings(_resume_settings(plan))
            chunk_rows = store.chunk_rows  # a resumed store keeps its chunking; the other follows
        elif pixels:
            store = PixelStore.create(url, plan.rows, chunk_rows=chunk_rows,
                                      preprocessing=plan.preprocessing.to_dict(),
                                      split=plan.split_info, source=plan.archive,
                                      compression=c.pixel_compression, storage_options=options,
                                      overwrite=exists)
        else:
            resolved = {} if plan.resolved is None else {"resolved": plan.resolved.to_dict()}
            store = FeatureStore.create(url, plan.rows, plan.settings(), chunk_rows=chunk_rows,
                                        storage_options=options, overwrite=exists,
                                        extra={"archive": plan.archive,
                                               "extract_config": c.to_dict(), **resolved})
        stores.append(store)
    if len({store.chunk_rows for store in stores}) > 1:
        raise OptionError(f"{stores[0].url} has chunks of {stores[0].chunk_rows} rows and "
                          f"{stores[1].url} of {stores[1].chunk_rows}: write to a new store")
    return stores


def _run(client, stores: list[RowStore], rows: pd.DataFrame, urls: dict[str, str],
         config: TaskConfig, choices: ExtractConfig, progress: Progress) -> ExtractSummary:
    from distributed import span

    store = stores[0]  # the feature store, or the pixel store a cache pass writes
    todo, damaged = _chunks_to_run(stores, choices.retry_failed)
    started = time.perf_counter()
    warm_seconds = 0.0
    install_counters(client)
    run_token = uuid.uuid4().hex
    with span(f"cxrdask-extract {_store_name(store.url)}") as span_id:
        if todo:
            _warm_up(client, config, run_token)
            warm_seconds = time.perf_counter() - started  # worker start-up, imports, model build
        args = _chunk_arguments(store, todo, rows, urls, config)
        # retries: a task that raised (a worker's write to the store failed) runs again.
        futures = [client.submit(run_chunk, *a, config, pure=False, retries=TASK_RETRIES,
                                 key=f"{CHUNK_PREFIX}-{a[0]}-{run_token}")
                   for a in args]
        results = _gather(client, futures, sum(len(a[2]) for a in args), progress, choices.strict)
    summary = _summarise(client, store, results, config, span_id, todo=todo, damaged=damaged,
                         seconds=time.perf_counter() - started - warm_seconds,
                         warm_seconds=warm_seconds)
    for each in stores:
        _record_run(each, summary)
    return summary


def _chunks_to_run(stores: list[RowStore], retry_failed: bool) -> tuple[list[int], list[int]]:
    """The chunks this run computes: those not done in every store it writes, those found
    damaged (:func:`_damaged_done_chunks`), and with ``retry_failed`` those holding failed
    rows. Returns them and the damaged ones."""
    from cxrdask.store.features import STATUS_FAILED

    store = stores[0]
    done = np.logical_and.reduce([s.done_chunks() for s in stores])
    damaged = _damaged_done_chunks(stores, done)
    done[damaged] = False  # recomputed: a damaged chunk is never skipped as done
    if retry_failed:  # chunks holding failed rows are recomputed too
        failed_rows = np.flatnonzero(store.read("status") == STATUS_FAILED)
        done[np.unique(failed_rows // store.chunk_rows)] = False
    return [c for c in range(store.n_chunks) if not done[c]], damaged


def _warm_up(client, config: TaskConfig, run_token: str) -> None:
    """Build the backbone on every worker before the chunks are submitted."""
    # One per worker, preferably on it; a worker lost meanwhile hands its warm-up to
    # another (a strict pin would wait for the dead worker forever). Workers that
    # join later build their model in their first chunk task.
    warm = [client.submit(run_warmup, config, workers=[w], allow_other_workers=True,
                          pure=False, key=f"{WARMUP_PREFIX}-{i}-{run_token}")
            for i, w in enumerate(client.nthreads())]  # asked of the scheduler: _worker_threads
    try:
        client.gather(warm)
    except BaseException:
        client.cancel(warm)
        raise
    # Nothing needs their results: released, a worker lost later is not sent its
    # warm-up again (the scheduler recomputes lost results that a client still holds).
    del warm


def _chunk_arguments(store: RowStore, todo: list[int], rows: pd.DataFrame,
                     urls: dict[str, str], config: TaskConfig) -> list[tuple]:
    """Each chunk task's rows: its number, its images' URLs and names, and their flips."""
    from cxrdask.archive.splits import TRAIN

    names = rows["image_index"].tolist()
    codes = rows["split"].to_numpy()
    flip_train = config.preprocessing.flip == "train"
    args = []
    for chunk in todo:
        start, stop = store.chunk_bounds(chunk)
        chunk_names = names[start:stop]
        args.append((chunk, [urls.get(n) for n in chunk_names], chunk_names,
                     [flip_train and codes[r] == TRAIN and flip_for(n, config.flip_seed)
                      for r, n in zip(range(start, stop), chunk_names, strict=True)]))
    return args


def _gather(client, futures: list, total: int, progress: Progress, strict: bool) -> list[dict]:
    """The chunk tasks' results as they finish, with a progress bar; with ``strict``, the
    first failed row stops the run (:class:`~cxrdask.errors.StrictFailureError`)."""
    from distributed import as_completed

    from cxrdask.progress import progress_callback

    results: list[dict] = []
    bar = progress_callback(progress, total, unit="img", desc="extract")
    try:
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            bar.relative_update(result["images"])
            if strict and result["failures"]:
                name, reason = result["failures"][0]
                raise StrictFailureError(name, reason)
    except BaseException:
        # An error or Ctrl-C: nothing more starts before the lease is released (a chunk
        # still running is fenced by its lease check, or lands whole with its marker).
        client.cancel(futures)
        raise
    finally:
        bar.close()
    return results


def _summarise(client, store: RowStore, results: list[dict], config: TaskConfig,
               span_id: str, *, todo: list[int], damaged: list[int], seconds: float,
               warm_seconds: float) -> ExtractSummary:
    """The run's :class:`ExtractSummary`: its tasks' results, the store's whole status, and
    the stage times the dashboard's metrics recorded for the run's span."""
    from cxrdask.store.features import STATUS_FAILED, STATUS_PENDING

    failures = [f for r in results for f in r["failures"]]
    timings = _frame([{k: v for k, v in r.items()
                       if k not in ("failures", "conversions", "retriable")} for r in results])
    status = store.read("status")
    images_run = sum(r["images"] for r in results)
    measured = span_metrics(client, span_id, expect_images=images_run) if results else {}
    return ExtractSummary(
        store_url=store.url,
        rows_total=store.n_rows,
        rows_written=sum(r["ok"] for r in results),
        rows_failed=len(failures),
        chunks_total=store.n_chunks,
        chunks_skipped=store.n_chunks - len(todo),
        chunks_run=len(todo),
        chunks_damaged=damaged,
        seconds=seconds,
        warmup_seconds=warm_seconds,
        failures=failures,
        retriable=[f for r in results for f in r["retriable"]],
        conversions=[c for r in results for c in r["conversions"]],
        timings=timings,
        dashboard_link=getattr(client, "dashboard_link", None),
        split=store.provenance["split"].get("description", ""),
        chunk_rows=store.chunk_rows,
        store_rows_failed=int((status == STATUS_FAILED).sum()),
        store_rows_done=int((status != STATUS_PENDING).sum()),
        stage_seconds={stage: measured.get(stage, 0.0) for stage in STAGE_NAMES},
        span_id=span_id,
        precision=config.precision if config.store_url is not None else "",
        compiled=config.compile is True,
        engine=config.engine if config.store_url is not None else "",
    )


def _damaged_done_chunks(stores: list[RowStore], done: np.ndarray) -> list[int]:
    """The chunks marked done that fail their checksums or lost their data, in any store
    the run writes: a resumed run reads every chunk it would skip (far cheaper than
    computing it) and recomputes the damaged ones instead of trusting their markers."""
    skipped = np.flatnonzero(done)
    if len(skipped) == 0:
        return []
    damaged: set[int] = set()
    for store in stores:
        problems = store.verify((store.DATA_ARRAY, "status", "error"), chunks=skipped)
        damaged.update(int(c) for c in problems["chunk"])
    return sorted(damaged)


def _record_run(store: RowStore, summary: ExtractSummary) -> None:
    """Keep the run's outcome in the store: failed-row count and conversions (first 1,000)."""
    previous = store.provenance.get("conversions", [])
    conversions = (previous + [list(c) for c in summary.conversions])[:1000]
    store.update_provenance(
        failed_rows=summary.store_rows_failed,  # counted from the status read in _run
        conversions=conversions,
        complete=store.is_complete(),
        last_run={"chunks_run": summary.chunks_run, "chunks_skipped": summary.chunks_skipped,
                  "seconds": round(summary.seconds, 3),
                  "images_per_second": round(summary.images_per_second, 2)},
    )


__all__ = ["ExtractSummary", "ExtractionPlan", "auto_chunk_rows", "cache_pixels", "extract_features",
           "extract_from_pixels", "local_layout", "plan_cache", "plan_extraction",
           "plan_from_pixels", "prepare_rows", "run_extraction"]
