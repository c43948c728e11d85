"""The worker side of an extraction: per-process state, the warm-up and the chunk task.

A task carries only its rows' URLs and a small picklable :class:`TaskConfig`. On the worker
it reads the bytes through fsspec (many at once, so object-store latency overlaps), decodes
and resizes them in a thread pool while the previous batch runs through the backbone (built
once per worker process and cached), writes its chunk of the store, then its done marker,
and reports its stage seconds to the dashboard (:mod:`cxrdask.metrics`).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._fs import StorageOptions, filesystem
from .backbone import BackboneSpec, cached_runner
from .config import DEFAULT_BATCH_SIZE
from .errors import ImageDecodeError
from .imaging import Preprocessing, decode_gray, to_model_input
from .metrics import report_chunk
from .store import STATUS_FAILED, STATUS_OK, FeatureStore

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



_WORKER_STATE: dict[Any, Any] = {}
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


__all__ = ["STAGES", "STAGE_NAMES", "TaskConfig", "extract_chunk", "warm_worker"]
