"""How an extraction is laid out: its rows in store order (train, then validation, then test),
rows per chunk (and task), and the layout of a local cluster started for it when none is
asked for. Torch-free.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from cxrdask._fs import StorageOptions
from cxrdask.backbones.engines import CPU_ENGINES
from cxrdask.backbones.hardware import cpu_auto_precision, has_no_gpu
from cxrdask.config import DEFAULT_BATCH_SIZE, ExtractConfig, SplitMethod
from cxrdask.extract.resolve import local_engine

if TYPE_CHECKING:
    import pandas as pd

MAX_AUTO_CHUNK_ROWS = 512
TASKS_PER_THREAD = 4  # tasks per worker thread that chunk_rows="auto" aims for


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


def worker_threads(client) -> int:
    """Threads of the cluster's workers, asked of the scheduler (``Client.nthreads``).

    Not ``Client.scheduler_info()["workers"]``: that reads a cache which the client's
    periodic refresh overwrites every 2 s with an identity that lists no workers, and a
    refresh landing between the fetch and the read gave an empty list (seen in CI: the
    first call sent no warm-up)."""
    return sum(client.nthreads().values()) or 1


__all__ = ["MAX_AUTO_CHUNK_ROWS", "TASKS_PER_THREAD", "auto_chunk_rows", "local_layout", "prepare_rows",
           "worker_threads"]
