"""JPEG files decoded on a GPU worker's device by nvJPEG, a batch per call.

CheXpert and MIMIC-CXR-JPG are 600,000 JPEGs. On a GPU node, decoding them on the host's
cores would bound the first pass over such an archive while the GPU waited. So a worker
whose backbone runs on a GPU, and whose store resizes on the device
(``torch-bilinear-antialias``), hands whole JPEG files to the device undecoded. Each batch's
files are decoded together by one nvJPEG call (TorchCodec's ``decode_jpeg``, the maintained
successor of torchvision's deprecated decoder: ``pip install 'cxrdask[gpu]'``), then resized
and normalised there with the rest of the batch.

Only files the device decodes as the host would go there (:func:`device_jpeg`): gray
(``L``) JPEGs, as the chest X-ray archives publish, that end in their end-of-image marker and
are within the pixel limit. Pillow reads just their header to tell; no pixels are decoded on
the host. Anything else, and any file nvJPEG refuses, is decoded on the host as before
(:func:`~cxrdask.imaging.decode.decode_gray`), so a damaged file is a failed row with
Pillow's reason.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

_SOI, _EOI = b"\xff\xd8\xff", b"\xff\xd9"


@dataclass(frozen=True)
class EncodedJpeg:
    """A whole gray JPEG file, left encoded for the device to decode."""

    data: bytes
    shape: tuple[int, int]  # (height, width), from its header


@functools.cache
def _torchcodec_jpeg():
    try:
        from torchcodec.decoders import decode_jpeg
    except (ImportError, OSError, RuntimeError):  # not installed, or built for another torch
        return None
    return decode_jpeg


def torchcodec_installed() -> bool:
    """Whether TorchCodec's JPEG decoder imports here (installed, and built for this torch)."""
    return _torchcodec_jpeg() is not None


def decodes_jpeg_on(device: Any) -> bool:
    """Whether JPEGs are decoded on ``device`` (a ``torch.device``): a GPU, with TorchCodec."""
    return getattr(device, "type", None) == "cuda" and torchcodec_installed()


def device_jpeg(data: bytes, max_pixels: int) -> EncodedJpeg | None:
    """``data`` kept encoded for the device when it is a whole gray JPEG within
    ``max_pixels``, else None (the host decodes it, and names what is wrong with it)."""
    if data[:3] != _SOI or not data[-16:].rstrip(b"\x00").endswith(_EOI):  # whole files only
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            if image.format != "JPEG" or image.mode != "L":
                return None
            width, height = image.size
    except Exception:  # not readable as a JPEG: the host decode says why
        return None
    if width * height > max_pixels:
        return None  # the host refuses it as a decompression bomb, naming its size
    return EncodedJpeg(data, (height, width))


def decode_on_device(jpegs: Sequence[EncodedJpeg], device: Any) -> list[Any]:
    """Each file as a ``(height, width)`` uint8 tensor on ``device``, decoded in one batched
    call; None for a file the decoder refuses (a refusal fails the whole call, so the batch
    is then decoded file by file to find it)."""
    decode_jpeg = _torchcodec_jpeg()
    assert decode_jpeg is not None, "decodes_jpeg_on(device) is checked first"
    try:
        images = decode_jpeg([jpeg.data for jpeg in jpegs], mode="GRAY", device=device)
        return [image[0] for image in images]
    except RuntimeError:
        pass
    out: list[Any] = []
    for jpeg in jpegs:
        try:
            out.append(decode_jpeg(jpeg.data, mode="GRAY", device=device)[0])
        except RuntimeError:
            out.append(None)
    return out


__all__ = ["EncodedJpeg", "decode_on_device", "decodes_jpeg_on", "device_jpeg",
           "torchcodec_installed"]
