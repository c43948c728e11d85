"""What runs a frozen backbone: one protocol, one small backend per engine, one table of rules.

Every engine starts from the same network (:func:`cxrdask.backbones.build.build_backbone`)
and turns float32 ``(B, 3, H, W)`` batches into float32 ``(B, feature_dim)`` features:

- ``torch`` (:mod:`.eager`): eager PyTorch on the CPU or a GPU, fp32, bf16 or (GPUs) fp16
  autocast, optionally ``torch.compile``-d;
- ``onnxruntime`` (:mod:`.onnxruntime`): the network exported to ONNX, CPU fp32 only, its
  export cached on disk so a worker that finds it never imports torch;
- ``openvino`` (:mod:`.openvino`): the same export compiled by OpenVINO, CPU fp32 or bf16.

A TorchScript engine (a frozen trace fused by oneDNN Graph) ran bf16 CPU backbones until
OpenVINO, which PyTorch's deprecation of TorchScript does not touch, ran them as fast or
faster (``benchmarks/bench_peers.py``; see ``docs/benchmarks.md``).

:data:`ENGINE_RULES` says, for each, what it runs on; :func:`engine_refusal` is the one
place a combination is refused with its reason, and the resolver
(:mod:`cxrdask.extract.resolve`) chooses among the engines the table allows. This module
imports neither torch nor any engine: a client can ask the table without either.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from cxrdask.backbones.spec import BackboneSpec


@dataclass(frozen=True)
class EngineRule:
    """What one engine runs: on which devices, at which precisions (per device), whether
    it can be compiled, and the module of its backend."""

    name: str
    precisions: dict[str, tuple[str, ...]]  # device type -> precisions it computes there
    compiles: bool
    module: str
    summary: str
    takes_torch: bool = True  # its input is a torch tensor (False: NumPy; no torch imported)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)


ENGINE_RULES: dict[str, EngineRule] = {
    "torch": EngineRule("torch", {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")},
                        True, "eager", "eager PyTorch (autocast; optionally torch.compile)"),
    "onnxruntime": EngineRule("onnxruntime", {"cpu": ("fp32",)}, False, "onnxruntime",
                              "ONNX Runtime on the CPU, fp32, its export cached on disk",
                              takes_torch=False),
    "openvino": EngineRule("openvino", {"cpu": ("fp32", "bf16")}, False, "openvino",
                           "OpenVINO on the CPU from the same ONNX export, its compiled "
                           "model cached on disk", takes_torch=False),
}
#: Engines that run the backbone on the CPU only (``device="auto"`` means the CPU for them).
CPU_ENGINES = tuple(name for name, rule in ENGINE_RULES.items() if rule.devices == ("cpu",))
#: Engines that take NumPy input and run without torch (from a cached ONNX export).
TORCH_FREE_ENGINES = tuple(name for name, rule in ENGINE_RULES.items() if not rule.takes_torch)


def _runs(rule: EngineRule) -> str:
    """What an engine runs, in words: ``fp32 or bf16 on the CPU, uncompiled``."""
    where = "; ".join(f"{' or '.join(p)} on {'the CPU' if d == 'cpu' else 'a GPU'}"
                      for d, p in rule.precisions.items())
    return where + ("" if rule.compiles else ", uncompiled")


def engine_refusal(engine: str, device: str, precision: str, compile: bool | str) -> str | None:
    """Why ``engine`` cannot run a backbone on ``device`` (``cpu``, ``cuda`` or ``auto``) at
    ``precision`` (``auto`` or a concrete one), compiled or not (``auto`` too), or None where
    some choice of the ``auto`` values lets it: the rules of :data:`ENGINE_RULES`, said once."""
    if engine == "auto":
        return None
    rule = ENGINE_RULES.get(engine)
    if rule is None:
        return f"engine must be one of {('auto', *ENGINE_RULES)}, not {engine!r}"
    devices = rule.devices if device == "auto" else (device.split(":")[0],)
    fits = [d for d in devices if d in rule.precisions
            and (precision == "auto" or precision in rule.precisions[d])]
    if fits and (compile is not True or rule.compiles):
        return None
    if engine == "torch" and precision == "fp16" and device != "cuda":
        return "fp16 autocast needs a GPU; on CPUs use bf16 (native on recent CPUs)"
    return (f"engine {engine!r} runs {_runs(rule)}: use engine 'torch' (or 'auto') for "
            "other precisions, compile or a GPU")


class Backend(Protocol):
    """One engine's running backbone, shared by a worker's threads.

    ``pads``: batches shorter than the batch size must be padded to it (a compiled graph or
    a trace is built for one shape; the runner pads and trims). ``run`` takes a float32
    batch as a NumPy array or as a tensor already on the backend's device. ``warm`` does
    what makes the first real batch as fast as the next, where anything does."""

    pads: bool

    def run(self, batch: Any) -> np.ndarray: ...

    def warm(self, shape: tuple[int, int, int]) -> None: ...


def open_backend(engine: str, spec: BackboneSpec, device: Any, precision: str, compile: bool,
                 batch_size: int, threads: int) -> Backend:
    """The backend of ``engine`` for ``spec`` (its module imported only now)."""
    module = import_module(f"{__name__}.{ENGINE_RULES[engine].module}")
    return module.open_backend(spec, device=device, precision=precision, compile=compile,
                               batch_size=batch_size, threads=threads)


__all__ = ["CPU_ENGINES", "ENGINE_RULES", "TORCH_FREE_ENGINES", "Backend", "EngineRule", "engine_refusal",
           "open_backend"]
