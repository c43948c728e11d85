"""What the machine's arithmetic can do: native bf16 on this CPU, and the precision "auto" means.

bf16 halves the head's time on CPUs with AVX-512-BF16 or AMX and on GPUs, but is emulated
(and slower than fp32) on CPUs without them, so "auto" asks the hardware, and what was
used is recorded beside the results.
"""

from __future__ import annotations

import functools
import glob
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: Device files a GPU runtime needs: NVIDIA's, ROCm's, and WSL2's (where CUDA goes through
#: /dev/dxg). Where none exists, torch can see no GPU, and saying so needs no torch import.
GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512-BF16 or AMX in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cpu_auto_precision() -> str:
    """What ``precision="auto"`` means on this machine's CPU: bf16 where native, else fp32."""
    return "bf16" if cpu_has_native_bf16() else "fp32"


def has_no_gpu() -> bool:
    """Whether this machine certainly has no GPU torch could use: none of
    :data:`GPU_DEVICE_FILES` exists (found in microseconds, where asking torch first
    imports it: 2 s on one core). False means "maybe": ask torch."""
    return not any(glob.glob(pattern) for pattern in GPU_DEVICE_FILES)


def backbone_device_type(device: str, engine: str) -> str:
    """Where this machine would run the backbone: ``cpu`` or ``cuda`` (ONNX Runtime: the CPU).

    Told without importing torch where the answer cannot be a GPU (``device="cpu"``, ONNX
    Runtime, or ``auto`` on a machine :func:`has_no_gpu`); torch is asked otherwise."""
    if engine != "torch" or device == "cpu" or (device == "auto" and has_no_gpu()):
        return "cpu"
    from .backbone import resolve_device

    return resolve_device(device).type


def auto_precision(device: str, engine: str) -> str:
    """What ``precision="auto"`` means for a backbone run here: bf16 where the CPU (or GPU)
    computes bf16 natively, else fp32; ONNX Runtime runs fp32. Torch-free on the CPU."""
    if engine != "torch":
        return "fp32"
    if backbone_device_type(device, engine) == "cpu":
        return cpu_auto_precision()
    from .backbone import resolve_device

    return resolve_precision("auto", resolve_device(device))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on GPUs that support it and on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return cpu_auto_precision()


__all__ = ["GPU_DEVICE_FILES", "auto_precision", "backbone_device_type", "cpu_auto_precision",
           "cpu_has_native_bf16", "has_no_gpu", "resolve_precision"]
