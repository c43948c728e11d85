"""The worker side of an extraction: per-process state, the warm-up and the chunk task.

A task carries only its rows' URLs and a small picklable :class:`TaskConfig`. On the worker
it reads the bytes through fsspec (many at once, so object-store latency overlaps), decodes
and resizes them in a thread pool while the previous batch runs through the backbone (built
once per worker process and cached), writes its chunk of the store, then its done marker,
and reports its stage seconds to the dashboard (:mod:`cxrdask.extract.metrics`).

With a pixel store (:mod:`cxrdask.store.pixels`) a task either reads its chunk of decoded
images instead of PNGs (``pixels_role="source"``), or also writes the images it decoded
(``"write"``; with no feature store, that is all it does: ``cxrdask cache``). uint8
pixels go to the device, which resizes (``torch-bilinear-antialias``) and normalises them
(:class:`~cxrdask.imaging.model_input.DeviceInput`).

torch is imported only where a task needs it (a torch backbone, or resizing on the device):
a worker running ONNX Runtime from a cached export, or writing a pixel store, normalises
with NumPy (:class:`~cxrdask.imaging.host_input.HostInput`) and starts 2-3 s sooner.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import numpy as np

from cxrdask._fs import filesystem
from cxrdask.backbones.engines import ENGINE_RULES
from cxrdask.errors import ImageDecodeError
from cxrdask.extract.metrics import report_chunk
from cxrdask.extract.summary import ChunkResult
from cxrdask.extract.task_config import STAGES, TaskConfig
from cxrdask.extract.worker_state import StoreKey, worker_state
from cxrdask.imaging.decode import DEFAULT_MAX_PIXELS, decode_gray, format_note, resize_gray, signatures
from cxrdask.imaging.host_input import HostInput, needs_torch_input
from cxrdask.imaging.jpeg_device import EncodedJpeg, decode_on_device, decodes_jpeg_on, device_jpeg
from cxrdask.runtime.retries import call_with_retries, is_transient
from cxrdask.store.features import (
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    THUMBNAIL_SIDE,
    FeatureStore,
)
from cxrdask.store.lease import check_lease
from cxrdask.store.pixels import PixelStore
from cxrdask.store.rows import RowStore


def _worker_resources(config: TaskConfig):
    """This run's stores and I/O pool in this process, made once and reused by every task:
    ``(feature store | None, pixel store | None, pool)`` (see :mod:`~cxrdask.extract.worker_state`)."""
    state = worker_state()
    with state.lock:
        if state.torch_threads != config.torch_threads and _uses_torch(config):
            import torch

            torch.set_num_threads(config.torch_threads)
            state.torch_threads = config.torch_threads
        options = repr(config.storage_options)
        opened: list[Any] = []
        modes: tuple[tuple[type[RowStore], str | None, Literal["r", "r+"]], ...] = (
            (FeatureStore, config.store_url, "r+"),
            (PixelStore, config.pixels_url, "r" if config.pixels_role == "source" else "r+"),
        )
        for kind, url, mode in modes:
            if url is None:
                opened.append(None)
                continue
            key = StoreKey(kind.KIND, url, options, mode)
            if key not in state.stores:
                state.stores[key] = kind.open(url, storage_options=config.storage_options, mode=mode)
            opened.append(state.stores[key])
        return opened[0], opened[1], state.pool(config.io_threads)


def _load_one(url: str, name: str, config: TaskConfig, jpeg_to_device: bool = False):
    """Read, decode and (unless the device resizes) resize one image:
    (uint8 array | encoded JPEG | None, note | error, retriable, read_s, decode_s, resize_s).

    A transient read failure (reset, timeout, 5xx) is tried again up to
    ``config.read_retries`` times; one that outlasts them makes the row *retriable*. With
    ``jpeg_to_device``, a whole gray JPEG is returned encoded, for the device to decode
    (:mod:`~cxrdask.imaging.jpeg_device`)."""
    t0 = time.perf_counter()
    try:
        fs, path = filesystem(url, config.storage_options)
        data = call_with_retries(lambda: fs.cat_file(path), config.read_retries)
    except FileNotFoundError:
        return None, "file not found", False, time.perf_counter() - t0, 0.0, 0.0
    except Exception as exc:  # botocore and aiohttp errors are not all OSErrors
        transient = is_transient(exc)
        reason = f"cannot read: {type(exc).__name__}: {exc}"
        if transient:
            reason += f" (after {config.read_retries + 1} attempts)"
        return None, reason, transient, time.perf_counter() - t0, 0.0, 0.0
    t1 = time.perf_counter()
    if jpeg_to_device:
        jpeg = device_jpeg(data, DEFAULT_MAX_PIXELS)
        if jpeg is not None:  # its conversion is noted once it is decoded
            return jpeg, None, False, t1 - t0, time.perf_counter() - t1, 0.0
    try:
        gray, note = decode_gray(data, name, modalities=config.modalities)
    except ImageDecodeError as exc:
        return None, exc.reason, False, t1 - t0, time.perf_counter() - t1, 0.0
    t2 = time.perf_counter()
    if config.preprocessing.resize_on_device:
        array = np.asarray(gray, dtype=np.uint8)  # full size: the device resizes the batch
    else:
        array = resize_gray(gray, config.preprocessing)
    return array, note, False, t1 - t0, t2 - t1, time.perf_counter() - t2


def _uses_torch(config: TaskConfig) -> bool:
    """Whether the task's input or backbone needs torch (see :mod:`cxrdask.imaging.host_input`)."""
    return needs_torch_input(config.preprocessing, ENGINE_RULES[config.engine].takes_torch,
                             config.runs_backbone)


def _device_input(config: TaskConfig):
    """This process's uint8 -> model input converter for the task's device and preprocessing:
    a :class:`~cxrdask.imaging.model_input.DeviceInput`, or a NumPy :class:`HostInput` where torch is
    not needed."""
    torch_input = _uses_torch(config)
    key = (config.device if torch_input else "host", config.preprocessing)
    state = worker_state()
    with state.lock:
        if key not in state.inputs:
            if torch_input:
                from cxrdask.backbones.hardware import resolve_device
                from cxrdask.imaging.model_input import DeviceInput

                state.inputs[key] = DeviceInput(resolve_device(config.device), config.preprocessing)
            else:
                state.inputs[key] = HostInput(config.preprocessing)
        return state.inputs[key]


def _runner(config: TaskConfig):
    """This process's backbone runner for the task's settings (built once, then cached)."""
    from cxrdask.backbones.runner import cached_runner

    return cached_runner(config.backbone, config.device, config.precision, config.compile,
                         config.batch_size, config.engine, config.torch_threads)


def measured_rate(config: TaskConfig) -> float:
    """Images per second this worker's backbone computes, from one timed batch of zeros at
    the store's image size (after its warm-up): what the client's estimate of a run's time
    is made of (:func:`cxrdask.extract.run.expected_time`)."""
    runner = _runner(config)
    size = config.preprocessing.size
    batch = np.zeros((config.batch_size, config.preprocessing.n_channels, size, size), np.float32)
    start = time.perf_counter()
    runner(batch)
    return config.batch_size / max(time.perf_counter() - start, 1e-9)


def warm_worker(config: TaskConfig) -> float:
    """Build the worker's backbone ahead of the chunks and warm it; returns seconds taken.

    Warming is the engine's (:meth:`~cxrdask.backbones.engines.Backend.warm`): a compiled
    model or a GPU runs a batch of zeros (the compile, the kernels and memory pool),
    OpenVINO compiles its model for the image shape. On the CPU an eager model
    and an ONNX Runtime session run their first batch as fast as the next (ResNet50, 8
    images, one core: eager 0.86 against 0.84 s, ONNX Runtime 0.74 against 0.74 s), so there
    the first chunk is not kept waiting for a batch nobody uses. A runner is warmed once per
    image shape: the next call in the session (its models kept) skips it."""
    start = time.perf_counter()
    _worker_resources(config)
    converter = _device_input(config)
    if config.runs_backbone:
        size = config.preprocessing.size
        with converter.stream():
            _runner(config).warm((config.preprocessing.n_channels, size, size))
    return time.perf_counter() - start


def extract_chunk(chunk: int, urls: list[str | None], names: list[str], flips: list[bool],
                  config: TaskConfig) -> ChunkResult:
    """Compute and write one chunk of the store(s) (idempotent: a re-run writes the same values)."""
    started = time.perf_counter()
    store, pixel_store, pool = _worker_resources(config)
    work = _ChunkWork(config, names, flips, _runner(config) if store is not None else None,
                      _device_input(config))
    if config.pixels_role == "source":
        assert pixel_store is not None
        work.from_pixel_store(pixel_store, chunk)
    else:
        work.from_images(urls, pool)
    if work.batch_rows:
        work.run_batch()
    work.write(chunk, store, pixel_store)
    return work.result(chunk, time.perf_counter() - started)


class _ChunkWork:
    """One chunk's buffers while its task runs: features, kept pixels, status, errors, the
    batch being filled and the stage times; the steps of :func:`extract_chunk` fill them."""

    def __init__(self, config: TaskConfig, names: list[str], flips: list[bool], runner,
                 converter) -> None:
        n = len(names)
        size = config.preprocessing.size
        self.config, self.names, self.flips = config, names, flips
        self.runner, self.converter = runner, converter
        self.features = (np.full((n, runner.spec.feature_dim), np.nan, dtype=np.float32)
                         if runner is not None else None)
        self.pixels_out = (np.zeros((n, size, size), dtype=np.uint8)
                           if config.pixels_role == "write" else None)
        # Each image's signatures, kept beside its features (zeros where it failed)
        self.thumbnails = (np.zeros((n, THUMBNAIL_SIDE, THUMBNAIL_SIDE), dtype=np.uint8)
                           if runner is not None else None)
        self.details = (np.zeros((n, THUMBNAIL_SIDE, THUMBNAIL_SIDE), dtype=np.int8)
                        if runner is not None else None)
        self.status = np.full(n, STATUS_FAILED, dtype=np.uint8)
        self.errors = [""] * n
        self.retriable = np.zeros(n, dtype=bool)  # unreadable for now: the chunk stays not done
        self.notes: list[tuple[str, str]] = []
        self.timing = dict.fromkeys(STAGES, 0.0)
        self.batch_rows: list[int] = []
        # Host uint8 arrays; encoded JPEGs until the device decodes them (then its tensors).
        self.batch_arrays: list[Any] = []

    def run_batch(self, stacked: np.ndarray | None = None) -> None:
        """The batch's uint8 images to the device: resize there if asked, keep the pixels,
        normalise, run the backbone. ``stacked``: the batch already in one array (rows of
        a pixel store, at the model's size)."""
        if any(isinstance(item, EncodedJpeg) for item in self.batch_arrays):
            self._decode_jpegs_on_device()
            if not self.batch_rows:
                return
        t = time.perf_counter()
        rows, converter = self.batch_rows, self.converter
        on_device_resize = stacked is None and self.config.preprocessing.resize_on_device
        host = stacked if stacked is not None or on_device_resize else np.stack(self.batch_arrays)
        if host is not None and self.pixels_out is not None:
            self.pixels_out[rows] = host  # resized already, on the host
        if host is not None and self.thumbnails is not None:
            self._sign(rows, host)
        if self.runner is not None or on_device_resize:  # else a cache pass: nothing for the device
            with converter.stream():
                if host is None:
                    pixels = converter.resize(self.batch_arrays)
                    if self.pixels_out is not None or self.thumbnails is not None:
                        resized = pixels.cpu().numpy()
                        if self.pixels_out is not None:
                            self.pixels_out[rows] = resized
                        if self.thumbnails is not None:
                            self._sign(rows, resized)
                    self.timing["resize_s"] += time.perf_counter() - t
                    t = time.perf_counter()
                else:
                    pixels = converter.to_device(host)
                if self.runner is not None and self.features is not None:
                    flipped = [self.flips[i] for i in rows]
                    self.features[rows] = self.runner.features(converter.normalise(pixels, flipped))
            self.timing["forward_s"] += time.perf_counter() - t
        self.status[rows] = STATUS_OK
        rows.clear()
        self.batch_arrays.clear()

    def _sign(self, rows: list[int], images: np.ndarray) -> None:
        """The batch's signatures (thumbnail and detail, :func:`~cxrdask.imaging.decode.signatures`)
        from its images at the model's size."""
        assert self.thumbnails is not None and self.details is not None
        self.thumbnails[rows], self.details[rows] = signatures(images, THUMBNAIL_SIDE)

    def _decode_jpegs_on_device(self) -> None:
        """The batch's encoded JPEGs decoded on the device in one call; a file the device
        refuses is decoded on the host, and one the host cannot decode either leaves the
        batch as a failed row with the host's reason. A decoded file's conversion is noted
        as the host's decode notes it."""
        t = time.perf_counter()
        at = [k for k, item in enumerate(self.batch_arrays) if isinstance(item, EncodedJpeg)]
        jpegs: list[EncodedJpeg] = [self.batch_arrays[k] for k in at]
        with self.converter.stream():
            decoded = decode_on_device(jpegs, self.converter.device)
        failed: set[int] = set()
        for k, jpeg, image in zip(at, jpegs, decoded, strict=True):
            row, note = self.batch_rows[k], format_note("JPEG")
            if image is None:
                try:
                    gray, note = decode_gray(jpeg.data, self.names[row])
                    image = np.asarray(gray, dtype=np.uint8)
                except ImageDecodeError as exc:
                    self.errors[row] = exc.reason
                    failed.add(k)
                    continue
            self.batch_arrays[k] = image
            if note:
                self.notes.append((self.names[row], note))
        if failed:
            kept = [k for k in range(len(self.batch_rows)) if k not in failed]
            self.batch_rows[:] = [self.batch_rows[k] for k in kept]
            self.batch_arrays[:] = [self.batch_arrays[k] for k in kept]
        self.timing["decode_s"] += time.perf_counter() - t

    def from_pixel_store(self, pixel_store: PixelStore, chunk: int) -> None:
        """The chunk's images from a pixel store, a batch at a time (failed rows stay failed)."""
        t = time.perf_counter()
        stored, stored_status, stored_errors = pixel_store.read_chunk(chunk)
        self.timing["read_s"] = time.perf_counter() - t
        for i in np.flatnonzero(stored_status != STATUS_OK):
            self.errors[i] = str(stored_errors[i]) or "not in the pixel store"
        ok = np.flatnonzero(stored_status == STATUS_OK)
        for first in range(0, len(ok), self.config.batch_size):
            rows = ok[first:first + self.config.batch_size]
            self.batch_rows.extend(int(r) for r in rows)
            # Contiguous rows (nearly always) are a view: no copy before the pinned buffer.
            contiguous = rows[-1] - rows[0] + 1 == len(rows)
            self.run_batch(stored[rows[0]:rows[-1] + 1] if contiguous else stored[rows])

    def from_images(self, urls: list[str | None], pool) -> None:
        """Read and decode the chunk's images in the I/O pool, two batches ahead of the
        device, running each full batch."""
        config, names, n = self.config, self.names, len(self.names)
        jpeg_to_device = (self.runner is not None and config.preprocessing.resize_on_device
                          and decodes_jpeg_on(getattr(self.converter, "device", None)))

        def submit(i: int):
            if urls[i] is None:
                return None
            return pool.submit(_load_one, urls[i], names[i], config, jpeg_to_device)

        # Keep two batches of reads in flight ahead of the network: latency overlaps, memory is bounded.
        window = 2 * config.batch_size
        pending = {i: submit(i) for i in range(min(window, n))}
        for i in range(n):
            future = pending.pop(i)
            if i + window < n:
                pending[i + window] = submit(i + window)
            if future is None:
                self.errors[i] = "file not found"
                continue
            array, message, transient, read_s, decode_s, resize_s = future.result()
            self.timing["read_s"] += read_s
            self.timing["decode_s"] += decode_s
            self.timing["resize_s"] += resize_s
            if array is None:
                self.errors[i] = message
                self.retriable[i] = transient
                continue
            if message:
                self.notes.append((names[i], message))
            self.batch_rows.append(i)
            self.batch_arrays.append(array)
            if len(self.batch_rows) == config.batch_size:
                self.run_batch()

    def write(self, chunk: int, store: FeatureStore | None, pixel_store: PixelStore | None) -> None:
        """The chunk's rows into the store(s), then their done markers (not with rows to read
        again); refused by the lease check if this run's lease was taken over."""
        t = time.perf_counter()
        self.status[self.retriable] = STATUS_PENDING  # read again by the next run, never failed
        done = not self.retriable.any()
        for url, token in self.config.leases:  # fencing: a run that lost its lease writes nothing
            check_lease(url, token, self.config.storage_options)
        if pixel_store is not None and self.pixels_out is not None:
            pixel_store.write_chunk(chunk, self.pixels_out, self.status, self.errors, done=done)
        if store is not None and self.features is not None:
            store.write_chunk(chunk, self.features, self.status, self.errors, done=done,
                              signatures=(None if self.thumbnails is None or self.details is None
                                          else (self.thumbnails, self.details)))
        self.timing["write_s"] = time.perf_counter() - t

    def result(self, chunk: int, task_seconds: float) -> ChunkResult:
        """What the client gets back (and what the dashboard's counters were told)."""
        n, status, names, errors = len(self.names), self.status, self.names, self.errors
        failed = int((status == STATUS_FAILED).sum())
        report_chunk({stage.removesuffix("_s"): seconds for stage, seconds in self.timing.items()},
                     n, failed)
        return ChunkResult(
            chunk=chunk, worker=_worker_name(), images=n, ok=int((status == STATUS_OK).sum()),
            failures=[(names[i], errors[i]) for i in range(n) if status[i] == STATUS_FAILED],
            retriable=[(names[i], errors[i]) for i in np.flatnonzero(self.retriable)],
            conversions=self.notes, **self.timing, task_s=task_seconds)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except ValueError:
        return f"pid-{os.getpid()}"


__all__ = ["extract_chunk", "measured_rate", "warm_worker"]
