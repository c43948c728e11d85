"""Running an extraction: take the stores' writer leases, create or resume them, build the
backbone on every worker, submit one task per store chunk, follow its progress, summarise.

:func:`extract_features`, :func:`extract_from_pixels` and :func:`cache_pixels` plan a pass
(:mod:`cxrdask.extract.plan`) while the session's cluster starts, then run it with
:func:`run_extraction`. Every choice is an :class:`~cxrdask.config.ExtractConfig`. Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdask._fs import StorageOptions
from cxrdask.config import ExtractConfig
from cxrdask.errors import (
    ExtractionFailedError,
    ExtractionIncompleteError,
    OptionError,
    StrictFailureError,
)
from cxrdask.extract.layout import auto_chunk_rows, local_layout, worker_threads
from cxrdask.extract.metrics import CHUNK_PREFIX, WARMUP_PREFIX, install_counters
from cxrdask.extract.plan import (
    ExtractionPlan,
    plan_cache,
    plan_extraction,
    plan_from_pixels,
    resume_settings,
)
from cxrdask.extract.resolve import WorkerFacts, resolve
from cxrdask.extract.summary import ChunkResult, ExtractSummary, record_run, summarise
from cxrdask.extract.task_config import TaskConfig
from cxrdask.extract.tasks import run_chunk, run_warmup, worker_hardware
from cxrdask.extract.worker_state import ExtractionWorkerPlugin
from cxrdask.imaging.preprocessing import flip_for
from cxrdask.store.lease import StoreLease

logger = logging.getLogger(__name__)
#: A run estimates its time (one timed batch per worker, after the warm-up) where each
#: worker thread has this many batches or more to compute: the timed batch then costs at
#: most 1% of the run, and a short run needs no estimate.
ESTIMATE_MIN_BATCHES = 100

if TYPE_CHECKING:
    import pandas as pd

    from cxrdask.archive.dicom_headers import ClientSource  # (pandas: imported by the call)
    from cxrdask.progress import Progress
    from cxrdask.store.rows import RowStore

TASK_RETRIES = 2  # Dask re-runs a chunk task that raised (a failed write) this many times


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
        A Dask client; None runs on :func:`~cxrdask.runtime.cluster.session_client`: the current
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
    return _plan_and_run(
        lambda headers_client: plan_extraction(
            metadata, images_root, store_url, config, storage_options=storage_options,
            pixels=pixels, client=headers_client, **options),
        client, n_workers, threads_per_worker, progress,
        local_layout(ExtractConfig.with_options(config, **options)))


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
    return _plan_and_run(
        lambda headers_client: plan_from_pixels(pixels, store_url, config, storage_options=storage_options,
                                 **options),
        client, n_workers, threads_per_worker, progress,
        local_layout(ExtractConfig.with_options(config, **options)))


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
    return _plan_and_run(
        lambda headers_client: plan_cache(
            metadata, images_root, pixels, config, storage_options=storage_options,
            split_codes=split_codes, client=headers_client, **options),
        client, n_workers, threads_per_worker, progress, default_layout=None)


def _plan_and_run(plan: Callable[[ClientSource], ExtractionPlan], client, n_workers: int | None,
                  threads_per_worker: int, progress: Progress,
                  default_layout: tuple[int, int] | None) -> ExtractSummary:
    """What the three public passes share: ``plan(client)``, then :func:`run_extraction` on
    ``client`` if given, else on the session's, whose local cluster (of ``default_layout``
    where no layout is asked for) starts in a thread while ``plan`` runs; ``plan`` is given
    a function that waits for it, called only where DICOM headers are to be read on it.

    Planning reads and checks the metadata, lists the images and checks the weights (1.5 s
    for the whole archive on a local disk, more on S3); starting a cluster takes as long,
    and its workers then import torch (2 s). Neither needs the other, so they overlap. When
    planning fails, its error is raised once the cluster is up (never a half-started
    one); the cluster is the session's, kept for the next call like any other.
    """
    if client is None:
        from concurrent.futures import ThreadPoolExecutor

        from cxrdask.runtime.cluster import session_client

        # Leaving the pool waits for the start, also when planning raised: no half-started
        # cluster is left behind the plan's error.
        with ThreadPoolExecutor(1, thread_name_prefix="cxrdask-cluster-start") as pool:
            started = pool.submit(session_client, n_workers, threads_per_worker,
                                  default_layout=default_layout)
            planned = plan(started.result)
        client = started.result()
    else:
        planned = plan(client)
    return run_extraction(planned, client, n_workers=n_workers,
                          threads_per_worker=threads_per_worker, progress=progress)


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
        A Dask client; None runs on :func:`~cxrdask.runtime.cluster.session_client` (the current
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
                  for url in plan.written_urls()]
        if client is None:
            from cxrdask.runtime.cluster import session_client

            client = session_client(n_workers, threads_per_worker,
                                    default_layout=plan.local_layout())
        return _execute(plan, client, leases, progress)


def _store_name(url: str) -> str:
    """The store's last path part (``nih.zarr``): what a span is called after."""
    return url.rstrip("/").rsplit("/", 1)[-1]


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
                      modalities=c.modalities,
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
    if not plan.runs_backbone:  # a cache pass
        return replace(plan, config=replace(c, compile=False if c.compile == "auto" else c.compile,
                                            engine="torch" if c.engine == "auto" else c.engine))
    if "auto" not in (c.precision, c.compile, c.engine):
        return replace(plan, resolved=resolve(c, [], len(plan.rows), 1))
    answers = client.run(worker_hardware, c.device, c.engine, on_error="return").values()
    facts = [WorkerFacts.from_answer(a) for a in answers if isinstance(a, dict)]
    resolved = resolve(c, facts, len(plan.rows), worker_threads(client))
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
            len(plan.rows), worker_threads(client), c.batch_size)
    stores: list[RowStore] = []
    for url in plan.written_urls():
        pixels = url == plan.pixels_url and plan.pixels_role == "write"
        kind = PixelStore if pixels else FeatureStore
        exists = kind.exists(url, options)
        if c.resume and exists:
            store = kind.open(url, storage_options=options, mode="r+")
            if isinstance(store, PixelStore):
                store.check_pixel_settings(plan.preprocessing.to_dict())
            else:
                store.check_settings(resume_settings(plan))
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
    todo, damaged = _chunks_to_run(stores, choices.retry_failed, client)
    started = time.perf_counter()
    warm_seconds = 0.0
    install_counters(client)
    run_token = uuid.uuid4().hex
    with span(f"cxrdask-extract {_store_name(store.url)}") as span_id:
        if todo:
            images = sum(stop - start for start, stop in map(store.chunk_bounds, todo))
            _warm_up(client, config, run_token, images)
            warm_seconds = time.perf_counter() - started  # worker start-up, imports, model build
        args = _chunk_arguments(store, todo, rows, urls, config)
        # retries: a task that raised (a worker's write to the store failed) runs again.
        futures = [client.submit(run_chunk, *a, config, pure=False, retries=TASK_RETRIES,
                                 key=f"{CHUNK_PREFIX}-{a[0]}-{run_token}")
                   for a in args]
        results = _gather(client, futures, sum(len(a[2]) for a in args), progress, choices.strict)
    summary = summarise(client, store, results, config, span_id, todo=todo, damaged=damaged,
                         seconds=time.perf_counter() - started - warm_seconds,
                         warm_seconds=warm_seconds)
    for each in stores:
        record_run(each, summary)
    return summary


def _chunks_to_run(stores: list[RowStore], retry_failed: bool, client
                   ) -> tuple[list[int], list[int]]:
    """The chunks this run computes: those not done in every store it writes, those found
    damaged (:func:`_damaged_done_chunks`), and with ``retry_failed`` those holding failed
    rows. Returns them and the damaged ones."""
    from cxrdask.store.features import STATUS_FAILED

    store = stores[0]
    done = np.logical_and.reduce([s.done_chunks() for s in stores])
    damaged = _damaged_done_chunks(stores, done, client)
    done[damaged] = False  # recomputed: a damaged chunk is never skipped as done
    if retry_failed:  # chunks holding failed rows are recomputed too
        failed_rows = np.flatnonzero(store.read("status") == STATUS_FAILED)
        done[np.unique(failed_rows // store.chunk_rows)] = False
    return [c for c in range(store.n_chunks) if not done[c]], damaged


def _warm_up(client, config: TaskConfig, run_token: str, images: int) -> None:
    """Build the backbone on every worker before the chunks are submitted; where the run
    is long enough (:data:`ESTIMATE_MIN_BATCHES`), time one batch on each and log the
    backbone's expected time for the run (:func:`expected_time`)."""
    # One per worker, preferably on it; a worker lost meanwhile hands its warm-up to
    # another (a strict pin would wait for the dead worker forever). Workers that
    # join later build their model in their first chunk task.
    threads = client.nthreads()  # asked of the scheduler: _worker_threads
    measure = images >= ESTIMATE_MIN_BATCHES * config.batch_size * max(1, sum(threads.values()))
    warm = [client.submit(run_warmup, config, measure, workers=[w], allow_other_workers=True,
                          pure=False, key=f"{WARMUP_PREFIX}-{i}-{run_token}")
            for i, w in enumerate(threads)]
    try:
        answers = client.gather(warm)
    except BaseException:
        client.cancel(warm)
        raise
    rates = [rate * n for (_, rate), n in zip(answers, threads.values(), strict=True)
             if rate is not None]
    if rates:
        logger.info(expected_time(images, rates, config))
    # Nothing needs their results: released, a worker lost later is not sent its
    # warm-up again (the scheduler recomputes lost results that a client still holds).
    del warm


def expected_time(images: int, rates: list[float], config: TaskConfig) -> str:
    """The line a run logs before its chunks start: the backbone's expected time for
    ``images`` on workers computing ``rates`` images per second each (one timed batch per
    worker, times its threads; reading and decoding share the cores, so this is a floor)."""
    total = sum(rates)
    seconds = images / total
    hours, rest = divmod(round(seconds), 3600)
    spent = f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"
    size = config.preprocessing.size
    return (f"expected: {images:,} images through {config.backbone.name} at {size}x{size} "
            f"take about {spent} of backbone time ({total:,.1f} images/s on {len(rates)} "
            f"worker{'s' if len(rates) != 1 else ''}, one timed batch each; reading and "
            "decoding come on top)")


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


def _gather(client, futures: list, total: int, progress: Progress, strict: bool) -> list[ChunkResult]:
    """The chunk tasks' results as they finish, with a progress bar; with ``strict``, the
    first failed row stops the run (:class:`~cxrdask.errors.StrictFailureError`)."""
    from distributed import as_completed

    from cxrdask.progress import progress_callback

    results: list[ChunkResult] = []
    bar = progress_callback(progress, total, unit="img", desc="extract")
    try:
        for future in as_completed(futures):
            result: ChunkResult = future.result()
            results.append(result)
            bar.relative_update(result.images)
            if strict and result.failures:
                name, reason = result.failures[0]
                raise StrictFailureError(name, reason)
    except BaseException:
        # An error or Ctrl-C: nothing more starts before the lease is released (a chunk
        # still running is fenced by its lease check, or lands whole with its marker).
        client.cancel(futures)
        raise
    finally:
        bar.close()
    return results


def _damaged_done_chunks(stores: list[RowStore], done: np.ndarray, client) -> list[int]:
    """The chunks marked done that fail their checksums or lost their data, in any store
    the run writes: a resumed run reads every chunk it would skip (far cheaper than
    computing it) and recomputes the damaged ones instead of trusting their markers.

    The reading is the cluster's, not the client's: at a million rows it is 4 GB of
    features, so each worker thread reads back a share of the chunks (two tasks a thread,
    each listing the store once)."""
    skipped = np.flatnonzero(done)
    if len(skipped) == 0:
        return []
    parts = [part for part in np.array_split(skipped, 2 * max(1, worker_threads(client)))
             if len(part)]
    futures = [client.submit(damaged_chunks_of, store.url, store.storage_options,
                             store.DATA_ARRAY, part.tolist(), pure=False)
               for store in stores for part in parts]
    return sorted({chunk for found in client.gather(futures) for chunk in found})


def damaged_chunks_of(url: str, storage_options: StorageOptions | None, data_array: str,
                      chunks: list[int]) -> list[int]:
    """Which of ``chunks`` of the store at ``url`` fail their checksums or lost their data
    (a task: :func:`_damaged_done_chunks`)."""
    from cxrdask.store.pixels import open_any_store

    store = open_any_store(url, storage_options=storage_options)
    problems = store.verify((data_array, "status", "error"), chunks=np.asarray(chunks))
    return sorted({int(chunk) for chunk in problems["chunk"]})


__all__ = ["cache_pixels", "extract_features", "extract_from_pixels", "run_extraction"]
