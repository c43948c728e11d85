"""8-bit gray images -> the backbone's input with NumPy, for engines that take host arrays.

ONNX Runtime runs on the CPU and takes NumPy arrays, so a worker running it needs no torch
for its input either: :class:`HostInput` does what :class:`~cxrdask.imaging.model_input.DeviceInput`
does on the CPU (flip where the 2018 recipe flips, scale to [0, 1], normalise, three
channels), with the arithmetic of :func:`cxrdask.imaging.decode.to_model_input` in the same order,
and hands the engine a contiguous ``(B, 3, H, W)`` float32 array. A worker that uses it
and finds its ONNX export cached never imports torch (2-3 s of a cold start on one core).

Resizing on the device (``torch-bilinear-antialias``) is torch's arithmetic: a store that
asks for it gets :class:`~cxrdask.imaging.model_input.DeviceInput` (see :func:`needs_torch_input`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cxrdask.imaging.preprocessing import Preprocessing


@dataclass(frozen=True)
class HostDevice:
    """Where a :class:`HostInput`'s arrays live: always the host (``type == "cpu"``)."""

    type: str = "cpu"


class HostInput:
    """Turns batches of uint8 gray images into normalised float32 NumPy input.

    The same interface as :class:`~cxrdask.imaging.model_input.DeviceInput` where the extraction
    uses it (``device``, ``stream``, ``to_device``, ``normalise``), for the host.

    Parameters
    ----------
    preprocessing
        Size, mean and std (the store's); its interpolation must resize on the host.
    """

    device = HostDevice()

    def __init__(self, preprocessing: Preprocessing):
        if preprocessing.resize_on_device:
            raise ValueError(f"{preprocessing.interpolation!r} resizes with torch: use DeviceInput")
        self.preprocessing = preprocessing
        self.mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, -1, 1, 1)

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Nothing to order on the host (a GPU input's CUDA stream)."""
        yield

    def to_device(self, images: np.ndarray) -> np.ndarray:
        """The uint8 ``(B, H, W)`` batch, contiguous (it is already where it is used)."""
        return np.ascontiguousarray(images)

    def normalise(self, pixels: np.ndarray, flips: Sequence[bool] | None = None) -> np.ndarray:
        """uint8 ``(B, size, size)`` -> float32 ``(B, 3, size, size)``, contiguous and
        normalised; rows with a true ``flips`` are mirrored left-right."""
        x = pixels.astype(np.float32) * np.float32(1.0 / 255.0)
        if flips is not None and any(flips):
            mask = np.asarray(flips, dtype=bool)
            x[mask] = x[mask, :, ::-1]
        return (x[:, None] - self.mean) / self.std  # broadcast: (B, channels, H, W), C-contiguous


def needs_torch_input(preprocessing: Preprocessing, engine_takes_torch: bool,
                      runs_backbone: bool) -> bool:
    """Whether a worker's input must be made with torch: to resize on the device, or to feed
    a torch backbone. ONNX Runtime and OpenVINO, and a cache pass
    that runs no backbone, take NumPy."""
    return preprocessing.resize_on_device or (runs_backbone and engine_takes_torch)


__all__ = ["HostDevice", "HostInput", "needs_torch_input"]
