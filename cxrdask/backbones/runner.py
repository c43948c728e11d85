"""Frozen backbones without their classifier, cached once per worker process.

The networks are torchvision's, built by :mod:`cxrdask.backbones.networks` from torch alone (a worker
does not import torchvision). Weights are ``"imagenet"`` (torchvision's published weights,
downloaded into the torch cache when online),
an enum name such as ``"IMAGENET1K_V2"``, a local or fsspec ``.pth`` file (identified by
its sha256), or ``"random"`` with a seed (what tests use). The identity of the weights
goes into the feature store, so features of different backbones are never mixed.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from cxrdask.backbones.build import LOAD_COUNTS, build_backbone
from cxrdask.backbones.hardware import CPU_ENGINES, resolve_device
from cxrdask.backbones.onnx import onnx_session
from cxrdask.backbones.spec import ENGINES, PRECISIONS, BackboneSpec
from cxrdask.backbones.torchscript import TorchScriptBackbone
from cxrdask.errors import (
    OptionError,
)

_CACHE: dict[tuple, BackboneRunner] = {}
_CACHE_LOCK = threading.Lock()


class BackboneRunner:
    """A frozen backbone bound to a device, precision and memory layout: arrays in, features out.

    With ``compile=True`` the batch is padded to a fixed size so torch.compile builds one
    graph, instead of recompiling for the short last batch of each chunk. With
    ``engine="onnxruntime"`` (CPU, fp32) the network is exported to ONNX (once per machine:
    :mod:`cxrdask.backbones.onnx` caches the export) and run by ONNX Runtime on as many
    threads as torch would use. With ``engine="torchscript"`` (CPU, fp32 or bf16) it is
    traced, frozen and fused by :mod:`cxrdask.backbones.torchscript`, batches padded to
    ``batch_size`` like a compiled model's.
    """

    def __init__(self, spec: BackboneSpec, device: str = "auto", precision: str = "fp32",
                 compile: bool = False, batch_size: int = 8, engine: str = "torch"):
        if precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if engine not in ENGINES:
            raise OptionError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.spec = spec
        self.device = resolve_device("cpu" if engine in CPU_ENGINES and device == "auto" else device)
        if precision == "fp16" and self.device.type != "cuda":
            raise OptionError("fp16 autocast needs a GPU; on CPUs use bf16 (native on recent CPUs)")
        self.precision = precision
        self.batch_size = batch_size
        self.compiled = compile
        self.padded = compile  # a compiled model (or a trace) is built for one batch shape
        self.engine = engine
        if engine == "onnxruntime":
            if self.device.type != "cpu" or precision != "fp32" or compile:
                raise OptionError("the onnxruntime engine runs fp32 on the CPU, without compile")
            self.session = onnx_session(spec, build_backbone, torch.get_num_threads())
            return
        if engine == "torchscript" and (self.device.type != "cpu" or compile):
            raise OptionError("the torchscript engine runs on the CPU, without compile")
        model = build_backbone(spec).to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        if engine == "torchscript":
            self.model = TorchScriptBackbone(model, precision, batch_size)
            self.padded = True
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # weights copied on the default stream, used on others
        # On CPUs, Inductor's freezing folds the frozen weights into the graph (constant
        # folding, prepacked oneDNN weights): inference only, which is all a backbone does here.
        if compile:
            model = (torch.compile(model, options={"freezing": True})
                     if self.device.type == "cpu" else torch.compile(model))
        self.model = model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Features (float32, ``(B, feature_dim)``) of a float32 ``(B, 3, H, W)`` batch."""
        if self.engine == "onnxruntime":
            return self.session.run(None, {"images": np.ascontiguousarray(batch, np.float32)})[0]
        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return self.features(tensor.contiguous(memory_format=torch.channels_last))

    def features(self, tensor: torch.Tensor) -> np.ndarray:
        """Features (float32 NumPy, ``(B, feature_dim)``) of a float32 batch already on the
        device (what :class:`~cxrdask.imaging.model_input.DeviceInput` makes)."""
        if self.engine == "onnxruntime":
            return self(tensor.cpu().numpy())
        n = len(tensor)
        if self.padded and n < self.batch_size:
            pad = tensor.new_zeros((self.batch_size - n, *tensor.shape[1:]))
            tensor = torch.cat([tensor, pad]).contiguous(memory_format=torch.channels_last)
        if self.engine == "torchscript":
            return self.model(tensor).float().numpy()[:n]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=dtype, enabled=dtype is not None
        ):
            out = self.model(tensor)
        return out.float().cpu().numpy()[:n]


def cached_runner(spec: BackboneSpec, device: str = "auto", precision: str = "fp32",
                  compile: bool = False, batch_size: int = 8, engine: str = "torch") -> BackboneRunner:
    """The process-wide runner for these settings, built on first use and reused by every task.

    Eager models are shared by a worker's threads (inference is thread-safe); a compiled
    model is not safe to call from two threads at once, so each thread compiles its own.
    """
    key = (spec, device, precision, compile, engine,
           (batch_size, threading.get_ident()) if compile else None)
    with _CACHE_LOCK:
        runner = _CACHE.get(key)
        if runner is None:
            runner = BackboneRunner(spec, device, precision, compile, batch_size, engine)
            _CACHE[key] = runner
        return runner


def load_counts() -> dict[str, int]:
    """How many backbones this process has built, by spec (Dask's ``client.run`` reads it)."""
    return {repr(spec): count for spec, count in LOAD_COUNTS.items()}


def load_backbone(name: str = "resnet50", weights: str | None = "imagenet",
                  device: str = "auto", seed: int = 0) -> nn.Module:
    """A frozen eval-mode backbone on ``device`` returning ``(B, feature_dim)`` features.

    Parameters
    ----------
    name
        ``resnet50``, ``resnet18`` or ``densenet121``.
    weights
        ``imagenet``, a torchvision enum name, a ``.pth`` file, or ``random``.
    device
        ``cpu``, ``cuda`` or ``auto``.
    seed
        Seed of ``random`` weights.

    Returns
    -------
    torch.nn.Module
        Without its classifier, gradients off.

    Raises
    ------
    WeightsUnavailableError
        The weights cannot be had (offline, a missing or mismatched file).
    """
    spec = BackboneSpec(name=name, weights=weights or "random", seed=seed)
    return build_backbone(spec).to(resolve_device(device))
