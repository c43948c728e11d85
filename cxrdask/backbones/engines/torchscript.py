"""The ``torchscript`` engine: the backbone traced and frozen by TorchScript, run by PyTorch's
oneDNN Graph fuser on the CPU.

Why: eager PyTorch calls oneDNN one layer at a time (each convolution, then its batch norm,
then its ReLU, each reading and writing the whole activation). A frozen trace folds the
batch norms into the convolutions and keeps the weights as constants; the oneDNN Graph
fuser then runs each convolution with its add and ReLU as one kernel. This is the recipe of
PyTorch's CPU performance tuning guide ("Use oneDNN Graph with TorchScript for inference").
Measured on an AMD EPYC with native bf16 (ResNet50, batch 8): bf16 24.2 against eager's
19.2 images/s on one thread, 49.6 against 38.4 on both cores at once (``bench_peers``'
bound); fp32 12.6 against 9.9 on one thread (alternated batches, ONNX Runtime 12.8).
Building it costs a trace (0.3 s) and one batch through the fuser's profiling pass (0.4 s),
where ``torch.compile`` with Inductor freezing took 22 s and ran bf16 1.1x eager.

The profiling pass runs on a batch of zeros of the full batch size before any image: the
fuser optimises the graph for the shapes it saw, so every later batch (padded to that size)
takes the same fused path and an image gets the same features in any batch of any chunk.

PyTorch has deprecated TorchScript in favour of ``torch.compile``; its deprecation warnings
are silenced here. :func:`~cxrdask.backbones.hardware.torchscript_available` says whether the
installed torch still ships it, without importing torch, so ``engine="auto"`` only chooses
it where it exists.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.engines.eager import as_device_batch
from cxrdask.backbones.hardware import torchscript_available
from cxrdask.backbones.spec import BackboneSpec
from cxrdask.errors import OptionError


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    """The arithmetic of a call: bf16 autocast without its weight cache (the tuning guide's
    setting for TorchScript: a frozen graph holds its weights as constants), or fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=False)


@contextlib.contextmanager
def _quiet_deprecation() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated",
                                category=FutureWarning)
        yield


class TorchScriptBackbone:
    """Frozen, fused traces of ``model`` for CPU batches of ``batch_size`` in ``channels_last``
    layout, one per image shape, each built (traced, frozen, profiled) at the first batch of
    its shape. Shared by a worker's threads: a frozen graph holds no state that a call
    changes, and a lock makes one thread build while the others wait for it. Shorter batches
    are padded to ``batch_size`` by the caller."""

    def __init__(self, model: nn.Module, precision: str, batch_size: int):
        if not torchscript_available():
            raise OptionError("this torch has no TorchScript (torch.jit.trace and freeze): "
                              "use engine 'torch'")
        self.model = model
        self.precision = precision
        self.batch_size = batch_size
        self._graphs: dict[tuple[int, ...], torch.jit.ScriptModule] = {}
        self._lock = threading.Lock()

    def graph_for(self, shape: tuple[int, ...]) -> torch.jit.ScriptModule:
        """The trace for images of ``shape`` (``(3, H, W)``), built and profiled at its first
        request: what a worker's warm-up asks for before its first chunk."""
        with self._lock:
            graph = self._graphs.get(shape)
            if graph is None:
                torch.jit.enable_onednn_fusion(True)
                example = torch.zeros(1, *shape).contiguous(memory_format=torch.channels_last)
                zeros = torch.zeros(self.batch_size, *shape).contiguous(
                    memory_format=torch.channels_last)
                with _quiet_deprecation(), torch.no_grad(), _autocast(self.precision):
                    graph = torch.jit.freeze(torch.jit.trace(self.model, example,
                                                             check_trace=False))
                    graph(zeros)  # the fuser's profiling pass, on the shape every call has
                self._graphs[shape] = graph
            return graph

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of a ``channels_last`` float32 batch of ``batch_size`` images."""
        graph = self.graph_for(tuple(batch.shape[1:]))
        with torch.no_grad(), _autocast(self.precision):
            return graph(batch)


class TorchScriptBackend:
    """The engine's backend: the network's traces, batches padded to ``batch_size``; warmed
    by building the trace of the run's image shape with its profiling pass."""

    pads = True

    def __init__(self, model: nn.Module, precision: str, batch_size: int):
        self.graphs = TorchScriptBackbone(model, precision, batch_size)

    def run(self, batch) -> np.ndarray:
        return self.graphs(as_device_batch(batch, torch.device("cpu"))).float().numpy()

    def warm(self, shape: tuple[int, int, int]) -> None:
        self.graphs.graph_for(shape)


def open_backend(spec: BackboneSpec, *, device: torch.device, precision: str, compile: bool,
                 batch_size: int, threads: int) -> TorchScriptBackend:
    model = build_backbone(spec).to(memory_format=torch.channels_last)
    return TorchScriptBackend(model, precision, batch_size)


__all__ = ["TorchScriptBackbone", "TorchScriptBackend", "open_backend"]
