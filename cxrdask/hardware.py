"""What the machine's arithmetic can do: native bf16 on this CPU, and the precision "auto" means.

bf16 halves the head's time on CPUs with AVX-512-BF16 or AMX and on GPUs, but is emulated
(and slower than fp32) on CPUs without them, so "auto" asks the hardware, and what was
used is recorded beside the results.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512-BF16 or AMX in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on GPUs that support it and on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


__all__ = ["cpu_has_native_bf16", "resolve_precision"]
