"""How images become model inputs, as a store records it: size, resize, normalisation,
channels, the training flip. Plain values, no image library: the client, the workers and
a reader of a store's provenance all use it.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CPU_INTERPOLATION = "bilinear-antialias"  # Pillow, in the decode threads
DEVICE_INTERPOLATION = "torch-bilinear-antialias"  # torch.nn.functional.interpolate, on the device


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
    reducing_gap : float
        Pillow's ``reducing_gap`` for large downscales.
    mean, std : tuple of float
        Per-channel normalisation (ImageNet's).
    flip : str
        ``none``, or ``train``: the 2018 recipe's random horizontal flip of training rows.
    channels : str
        How the gray image fills three channels (repeated).
    """

    size: int = 224
    interpolation: str = CPU_INTERPOLATION
    reducing_gap: float = 2.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flip: str = "none"  # "none", or "train" = random horizontal flip of training rows (2018)
    channels: str = "gray-repeated-3"

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


def flip_for(image_index: str, seed: int) -> bool:
    """The 2018 recipe's random horizontal flip, seeded per image so re-runs are identical."""
    digest = zlib.crc32(f"{seed}:{image_index}".encode())
    return bool(digest & 1)


__all__ = ["CPU_INTERPOLATION", "DEVICE_INTERPOLATION", "IMAGENET_MEAN", "IMAGENET_STD",
           "Preprocessing", "flip_for"]
