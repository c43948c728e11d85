"""Frozen backbones without their classifier, cached once per worker process.

The networks are torchvision's, built by :mod:`cxrdask.backbones.networks` from torch alone (a worker
does not import torchvision). Weights are ``"imagenet"`` (torchvision's published weights,
downloaded into the torch cache when online),
an enum name such as ``"IMAGENET1K_V2"``, a local or fsspec ``.pth`` file (identified by
its sha256), or ``"random"`` with a seed (what tests use). The identity of the weights
goes into the feature store, so features of different backbones are never mixed.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrdask.backbones.engines import (
    CPU_ENGINES,
    ENGINE_RULES,
    Backend,
    engine_refusal,
    open_backend,
)
from cxrdask.backbones.hardware import resolve_device
from cxrdask.backbones.spec import PRECISIONS, BackboneSpec
from cxrdask.errors import OptionError

if TYPE_CHECKING:
    import torch
    from torch import nn


class BackboneRunner:
    """A frozen backbone on one engine, device and precision: float32 batches in, features out.

    The engine's backend (:mod:`cxrdask.backbones.engines`) does the arithmetic; the runner
    pads a short batch where the backend runs one shape only, and warms the backend once per
    image shape. :meth:`build` checks the combination against the engines' table before
    anything is built, then builds the backend; without torch where the engine needs none
    (ONNX Runtime from its cached export). ``threads``: ONNX Runtime's intra-op threads
    (None: every core this process may use); PyTorch engines use torch's own setting.
    """

    def __init__(self, backend: Backend, spec: BackboneSpec, engine: str, device: Any,
                 precision: str, compile: bool, batch_size: int):
        self.backend = backend
        self.spec = spec
        self.engine = engine
        self.device = device  # a torch.device, or None where the engine needs no torch
        self.device_type = "cpu" if device is None else device.type
        self.precision = precision
        self.compiled = compile
        self.batch_size = batch_size
        self._warmed: set[tuple[int, int, int]] = set()
        self._lock = threading.Lock()

    @classmethod
    def build(cls, spec: BackboneSpec, device: str = "auto", precision: str = "fp32",
              compile: bool = False, batch_size: int = 8, engine: str = "torch",
              threads: int | None = None) -> BackboneRunner:
        """Check the combination against the engines' table, then build the engine's backend
        (the network built, exported, compiled or read from a cache: the I/O is here)."""
        if precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if engine not in ENGINE_RULES:
            raise OptionError(f"engine must be one of {tuple(ENGINE_RULES)}, not {engine!r}")
        torch_free = engine in ("onnxruntime", "openvino") and device in ("auto", "cpu")
        resolved: Any = None if torch_free else resolve_device(
            "cpu" if engine in CPU_ENGINES and device == "auto" else device)
        reason = engine_refusal(engine, "cpu" if resolved is None else resolved.type,
                                precision, compile)
        if reason is not None:
            raise OptionError(reason)
        backend = open_backend(engine, spec, resolved, precision, compile, batch_size,
                               threads or len(os.sched_getaffinity(0)))
        return cls(backend, spec, engine, resolved, precision, compile, batch_size)

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Features (float32 NumPy, ``(B, feature_dim)``) of a float32 ``(B, 3, H, W)``
        batch: a NumPy array, or a tensor already on the device (what
        :class:`~cxrdask.imaging.model_input.DeviceInput` makes)."""
        n = len(batch)
        if self.backend.pads and n < self.batch_size:
            batch = _padded(batch, self.batch_size)
        return self.backend.run(batch)[:n]

    features = __call__  # the name the extraction's device path calls

    def warm(self, shape: tuple[int, int, int]) -> bool:
        """Make the first batch of images of ``shape`` as fast as the next (a compile, a
        trace's profiling pass, a GPU's kernels), once per shape; whether this call did."""
        with self._lock:
            if shape in self._warmed:
                return False
            self.backend.warm(shape)
            self._warmed.add(shape)
            return True


def _padded(batch: Any, size: int) -> Any:
    """``batch`` with zero images appended up to ``size`` (NumPy or torch, as given)."""
    missing = size - len(batch)
    if isinstance(batch, np.ndarray):
        return np.concatenate([batch, np.zeros((missing, *batch.shape[1:]), batch.dtype)])
    import torch

    pad = batch.new_zeros((missing, *batch.shape[1:]))
    return torch.cat([batch, pad]).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class RunnerKey:
    """What makes two runners the same (a compiled model is also per thread: see
    :func:`cached_runner`)."""

    spec: BackboneSpec
    device: str
    precision: str
    compile: bool
    engine: str
    batch_size: int
    threads: int | None
    thread: int | None  # the calling thread, for a compiled model only


_RUNNERS: dict[RunnerKey, BackboneRunner] = {}
_RUNNERS_LOCK = threading.Lock()


def cached_runner(spec: BackboneSpec, device: str = "auto", precision: str = "fp32",
                  compile: bool = False, batch_size: int = 8, engine: str = "torch",
                  threads: int | None = None) -> BackboneRunner:
    """The process-wide runner for these settings, built on first use and reused by every
    task and every later run in the process (a session's next run starts warm).

    Eager models, traces and ONNX Runtime sessions are shared by a worker's threads
    (inference is thread-safe); a compiled model is not safe to call from two threads at
    once, so each thread compiles its own.
    """
    key = RunnerKey(spec, device, precision, compile, engine, batch_size,
                    threads if engine == "onnxruntime" else None,
                    threading.get_ident() if compile else None)
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            runner = _RUNNERS[key] = BackboneRunner.build(spec, device, precision, compile,
                                                          batch_size, engine, threads)
        return runner


def cached_runners() -> list[RunnerKey]:
    """The runners this process holds (Dask's ``client.run`` reads it: one backbone per
    worker process and setting, however many tasks and runs)."""
    with _RUNNERS_LOCK:
        return list(_RUNNERS)


def load_backbone(backbone: BackboneSpec | str = "resnet50", weights: str | None = None,
                  device: str = "auto", seed: int | None = None) -> nn.Module:
    """A frozen eval-mode backbone on ``device`` returning ``(B, feature_dim)`` features.

    Parameters
    ----------
    backbone
        A :class:`~cxrdask.backbones.spec.BackboneSpec` (its name, weights and seed), or a
        name: ``resnet50``, ``resnet18``, ``densenet121``, a torchxrayvision network
        (``xrv-...``) or ``timm:MODEL``.
    weights
        With a name: ``imagenet`` (the default), a torchvision enum name, a ``.pth`` file, or
        ``random``. With a spec: the spec's (giving them again is an error).
    device
        ``cpu``, ``cuda`` or ``auto``.
    seed
        Seed of ``random`` weights (with a name; default 0).

    Returns
    -------
    torch.nn.Module
        Without its classifier, gradients off.

    Raises
    ------
    WeightsUnavailableError
        The weights cannot be had (offline, a missing or mismatched file).
    OptionError
        A spec given with ``weights`` or ``seed`` besides.
    """
    from cxrdask.backbones.build import build_backbone

    if isinstance(backbone, BackboneSpec):
        if weights is not None or seed is not None:
            raise OptionError("load_backbone: a BackboneSpec carries its weights and seed; "
                              "give them in the spec, not again")
        spec = backbone
    else:
        spec = BackboneSpec(name=backbone, weights=weights or "imagenet", seed=seed or 0)
    return build_backbone(spec).to(resolve_device(device))


__all__ = ["BackboneRunner", "RunnerKey", "cached_runner", "cached_runners", "load_backbone"]
