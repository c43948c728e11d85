"""What the machine's arithmetic can do: native bf16 on this CPU, and what the precision and
engine "auto" mean.

bf16 halves the head's time on CPUs with AVX-512-BF16 or AMX and on GPUs, but is emulated
(and slower than fp32) on CPUs without them, so "auto" asks the hardware, and what was
used is recorded beside the results. Where the backbone then runs fp32 on the CPU, ONNX
Runtime is the faster engine (the rules: :mod:`cxrdask.extract.resolve`).
"""

from __future__ import annotations

import functools
import glob
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from cxrdask.backbones.engines import CPU_ENGINES, ENGINE_RULES
from cxrdask.errors import DeviceUnavailableError

if TYPE_CHECKING:
    import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: Device files a GPU runtime needs: NVIDIA's, ROCm's, and WSL2's (where CUDA goes through
#: /dev/dxg). Where none exists, torch can see no GPU, and saying so needs no torch import.
GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


@functools.cache
def native_bf16_flags() -> tuple[str, ...]:
    """The flags in /proc/cpuinfo by which this CPU computes bf16 natively (AVX-512-BF16,
    AMX); none where it does not, or where there is no /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512-BF16 or AMX in /proc/cpuinfo)."""
    return bool(native_bf16_flags())


def cpu_auto_precision() -> str:
    """What ``precision="auto"`` means on this machine's CPU: bf16 where native, else fp32."""
    return "bf16" if cpu_has_native_bf16() else "fp32"


def has_no_gpu() -> bool:
    """Whether this machine certainly has no GPU torch could use: none of
    :data:`GPU_DEVICE_FILES` exists (found in microseconds, where asking torch first
    imports it: 2 s on one core). False means "maybe": ask torch."""
    return not any(glob.glob(pattern) for pattern in GPU_DEVICE_FILES)


def backbone_device_type(device: str, engine: str) -> str:
    """Where this machine would run the backbone: ``cpu`` or ``cuda`` (ONNX Runtime and
    OpenVINO: the CPU).

    Told without importing torch where the answer cannot be a GPU (``device="cpu"``, ONNX
    Runtime, OpenVINO, or ``auto`` on a machine :func:`has_no_gpu`); torch is asked
    otherwise. Engine ``auto`` goes where PyTorch would: the others are chosen only for a CPU
    backbone."""
    if engine in CPU_ENGINES or device == "cpu" or (device == "auto" and has_no_gpu()):
        return "cpu"
    return resolve_device(device).type


def auto_precision(device: str, engine: str) -> str:
    """What ``precision="auto"`` means for a backbone run here: bf16 where the CPU (or GPU)
    computes bf16 natively, else fp32; ONNX Runtime runs fp32 (engine ``auto`` picks it only
    for fp32, so here it is PyTorch's answer). Torch-free on the CPU."""
    if ENGINE_RULES.get(engine) is not None and ENGINE_RULES[engine].precisions == {"cpu": ("fp32",)}:
        return "fp32"
    if backbone_device_type(device, engine) == "cpu":
        return cpu_auto_precision()
    return resolve_precision("auto", resolve_device(device))


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported here; found without importing it."""
    return importlib.util.find_spec("openvino") is not None


def onnxruntime_installed() -> bool:
    """Whether ONNX Runtime (and onnx, which torch's exporter needs) can be imported here;
    found without importing either."""
    return all(importlib.util.find_spec(module) is not None for module in ("onnxruntime", "onnx"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on GPUs that support it and on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return cpu_auto_precision()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is the worker's GPU when it has one, else the CPU (imports torch: the other
    facts here are told without it)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("device 'cuda' asked for, but torch sees no CUDA device here")
    return resolved


__all__ = ["GPU_DEVICE_FILES", "auto_precision",
           "backbone_device_type", "cpu_auto_precision", "cpu_has_native_bf16", "has_no_gpu",
           "native_bf16_flags",
           "onnxruntime_installed", "openvino_installed", "resolve_device", "resolve_precision"]
