"""How images become model inputs, as a store records it: size, resize, normalisation,
channels, the training flip. Plain values, no image library: the client, the workers and
a reader of a store's provenance all use it.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CPU_INTERPOLATION = "bilinear-antialias"  # Pillow, in the decode threads
DEVICE_INTERPOLATION = "torch-bilinear-antialias"  # torch.nn.functional.interpolate, on the device
BICUBIC_INTERPOLATION = "bicubic-antialias"  # Pillow, where a model's processor resizes bicubic


@dataclass(frozen=True)
class Preprocessing:
    """How images become tensors; recorded in the store so features are reproducible.

    Attributes
    ----------
    size : int
        Side of the square input, in pixels.
    interpolation : str
        The resize: ``bilinear-antialias`` is Pillow's antialiased bilinear in the decode
        threads; ``torch-bilinear-antialias`` is torch's antialiased bilinear
        ``interpolate`` on the worker's device (a GPU node's CPUs then only decode). Both
        round to 8 bits; they differ by about one gray level, so a store records which.
        ``bicubic-antialias`` is Pillow's bicubic, for a model whose image processor
        resizes so (a Hugging Face model's ``resample: 3``).
    reducing_gap : float or None
        Pillow's ``reducing_gap`` for large downscales (None: exact, as ``transformers``
        resizes).
    mean, std : tuple of float
        Per-channel normalisation (ImageNet's; one value each for a one-channel network).
    flip : str
        ``none``, or ``train``: the 2018 recipe's random horizontal flip of training rows.
    channels : str
        How the gray image becomes the network's input: ``gray-repeated-3`` (three equal
        channels, ImageNet networks) or ``gray-1`` (one channel, torchxrayvision's).
    crop : str
        ``none`` (the image squashed to a square); ``centre``: cropped to its centred
        square first, as torchxrayvision's ``XRayCenterCrop`` does; or ``shortest-edge``:
        the shorter side resized to ``size / crop_fraction``, the aspect kept, then the
        centred ``size`` square cropped, as ``transformers``' image processors and
        torchvision's ``Resize`` + ``CenterCrop`` do (on a device resize, approximated by
        ``centre``).
    crop_fraction : float
        With ``centre``, the share of the shorter side the square keeps (timm's
        ``crop_pct``: resizing the shorter side to ``size / crop_pct`` and cropping
        ``size`` is the same crop); 1 keeps the whole side.
    """

    size: int = 224
    interpolation: str = CPU_INTERPOLATION
    reducing_gap: float | None = 2.0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    flip: str = "none"  # "none", or "train" = random horizontal flip of training rows (2018)
    channels: str = "gray-repeated-3"
    crop: str = "none"
    crop_fraction: float = 1.0

    @property
    def n_channels(self) -> int:
        """Channels of the network's input: 1 for ``gray-1``, else 3."""
        return 1 if self.channels == "gray-1" else 3

    @property
    def resize_on_device(self) -> bool:
        """Whether images are resized by torch on the worker's device, not by Pillow."""
        return self.interpolation == DEVICE_INTERPOLATION

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        data = dict(data)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


def scale_by_range(pixels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``pixels`` (any numeric dtype, computed in theirs) scaled from their own minimum and
    maximum to the whole 0-255 range, never clipped: uint8, and that minimum and maximum."""
    low, high = float(pixels.min()), float(pixels.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((pixels - low) * scale).round().clip(0, 255).astype(np.uint8), low, high


def centre_square(height: int, width: int, fraction: float = 1.0) -> tuple[int, int, int]:
    """``(top, left, side)`` of an image's centred square, as torchxrayvision's
    ``XRayCenterCrop`` takes it (side the shorter edge, times ``fraction``; the start
    rounds down)."""
    side = max(1, round(min(height, width) * fraction))
    return height // 2 - side // 2, width // 2 - side // 2, side


def flip_for(image_index: str, seed: int) -> bool:
    """The 2018 recipe's random horizontal flip, seeded per image so re-runs are identical."""
    digest = zlib.crc32(f"{seed}:{image_index}".encode())
    return bool(digest & 1)


__all__ = ["BICUBIC_INTERPOLATION", "CPU_INTERPOLATION", "DEVICE_INTERPOLATION", "IMAGENET_MEAN",
           "IMAGENET_STD", "Preprocessing", "centre_square", "flip_for", "scale_by_range"]
