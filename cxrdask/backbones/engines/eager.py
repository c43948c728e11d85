"""The ``torch`` engine: eager PyTorch with autocast, on the CPU or a GPU, optionally
``torch.compile``-d (with Inductor freezing on CPUs: the frozen weights folded into the graph)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.spec import BackboneSpec

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def as_device_batch(batch: Any, device: torch.device) -> torch.Tensor:
    """A float32 batch (NumPy or tensor) as a ``channels_last`` tensor on ``device``."""
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
        if device.type == "cuda":
            batch = batch.pin_memory().to(device, non_blocking=True)
    return batch.contiguous(memory_format=torch.channels_last)


class EagerBackend:
    """A network on ``device`` run under ``precision``'s autocast (fp32: none). Compiled, it
    is padded to one batch shape, so torch.compile builds one graph instead of recompiling
    for each chunk's short last batch; compiled or on a GPU, ``warm`` runs a batch of zeros
    (the compile, a GPU's kernels and memory pool) before the first real one."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str,
                 compile: bool, batch_size: int):
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.pads = compile
        self.model = model

    def run(self, batch: Any) -> np.ndarray:
        tensor = as_device_batch(batch, self.device)
        dtype = _AUTOCAST.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype,
                                                    enabled=dtype is not None):
            out = self.model(tensor)
        return out.float().cpu().numpy()

    def warm(self, shape: tuple[int, int, int]) -> None:
        if self.pads or self.device.type != "cpu":
            self.run(torch.zeros(self.batch_size, *shape, device=self.device))


def open_backend(spec: BackboneSpec, *, device: torch.device, precision: str, compile: bool,
                 batch_size: int, threads: int) -> EagerBackend:
    model = build_backbone(spec).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # weights copied on the default stream, used on others
    if compile:
        model = (torch.compile(model, options={"freezing": True}) if device.type == "cpu"
                 else torch.compile(model))
    return EagerBackend(model, device, precision, compile, batch_size)


__all__ = ["EagerBackend", "as_device_batch", "open_backend"]
