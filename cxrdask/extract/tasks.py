"""An extraction's task entry points as the client sees them (their settings and stage names
are :mod:`cxrdask.extract.task_config`'s).

Torch-free, so the client that plans a run and submits its chunks never imports torch (3-5 s
of a cold start on a small machine): the entry points below import the worker side
(:mod:`cxrdask.extract.worker`, where torch and the backbone live) on the worker, at their
first call there. Dask pickles them by reference, so a task carries only their names.
"""

from __future__ import annotations

from typing import Any

from cxrdask.extract.summary import ChunkResult
from cxrdask.extract.task_config import TaskConfig


async def worker_hardware(device: str, engine: str) -> dict[str, Any]:
    """On a worker (through ``Client.run``): what ``precision="auto"`` means there (see
    :func:`cxrdask.backbones.hardware.auto_precision`), and for ``engine`` and ``compile`` ``"auto"``
    the device its backbone runs on (``cpu`` or ``cuda``), whether ONNX Runtime and OpenVINO are
    installed, and whether it has the C++ compiler Inductor needs.

    On a machine with no GPU device file the answer comes from the CPU's flags at once, so
    the client creates the store while the worker is still importing torch (2 s of a cold
    start on one core). Elsewhere torch is asked, and ``Client.run`` calls a plain function
    on the worker's event loop, which would stop answering the scheduler and its nanny
    during that import: a coroutine that asks in a thread keeps it responsive."""
    import asyncio
    import shutil

    from cxrdask.backbones.hardware import (
        auto_precision,
        backbone_device_type,
        onnxruntime_installed,
        openvino_installed,
    )

    def answer() -> dict[str, Any]:
        return {"precision": auto_precision(device, engine),
                "device": backbone_device_type(device, engine),
                "onnxruntime": onnxruntime_installed(),
                "openvino": openvino_installed(),
                "compiler": shutil.which("g++") or shutil.which("c++") or ""}

    return await asyncio.to_thread(answer)


def run_warmup(config: TaskConfig, measure: bool = False) -> tuple[float, float | None]:
    """On a worker: build its backbone ahead of the chunks; the seconds taken and, where
    ``measure``, the images per second one timed batch took; see
    :func:`cxrdask.extract.worker.warm_worker` and :func:`~cxrdask.extract.worker.measured_rate`."""
    from cxrdask.extract.worker import measured_rate, warm_worker

    seconds = warm_worker(config)
    return seconds, measured_rate(config) if measure and config.runs_backbone else None


def run_chunk(chunk: int, urls: list[str | None], names: list[str], flips: list[bool],
              config: TaskConfig) -> ChunkResult:
    """On a worker: compute and write one chunk; see :func:`cxrdask.extract.worker.extract_chunk`."""
    from cxrdask.extract.worker import extract_chunk

    return extract_chunk(chunk, urls, names, flips, config)


__all__ = ["run_chunk", "run_warmup", "worker_hardware"]
