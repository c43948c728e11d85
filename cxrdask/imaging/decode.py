"""Image bytes -> the backbone's input: decode, convert to 8-bit gray, resize, normalise.

Real NIH files are mostly 8-bit ``L`` PNGs, a few are RGBA (R = G = B), and users bring
16-bit or JPEG files too; each is converted and the conversion is reported. A file that
cannot be decoded raises :class:`ImageDecodeError` with the image index and the cause.
"""

from __future__ import annotations

import functools
import io
import re
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrdask.errors import ImageDecodeError, ImageTooLargeError
from cxrdask.imaging.dicom import (
    PROJECTION_MODALITIES,
    Modalities,
    decode_dicom,
    is_dicom,
    looks_like_bare_dicom,
)
from cxrdask.imaging.preprocessing import (
    BICUBIC_INTERPOLATION,
    Preprocessing,
    centre_square,
    scale_by_range,
)

_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")  # Pillow names its BytesIO
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (about 9459 x 9459)


def decode_gray(data: bytes, image_index: str = "?", max_pixels: int = DEFAULT_MAX_PIXELS,
                modalities: Modalities = PROJECTION_MODALITIES) -> tuple[Image.Image, str | None]:
    """Decode PNG/JPEG/DICOM bytes to an 8-bit ``L`` image; also return the conversion made.

    RGB/RGBA/LA/P become L; 16-bit and 32-bit images are scaled to 8 bits by their own
    range; images above ``max_pixels`` are refused before decoding (decompression bombs); a
    DICOM object whose modality is not in ``modalities`` is refused
    (:func:`~cxrdask.imaging.dicom.decode_dicom`).
    """
    if not data:
        raise ImageDecodeError(image_index, "empty file (0 bytes)")
    if is_dicom(data) or looks_like_bare_dicom(data):
        pixels, dicom_note = decode_dicom(data, image_index, max_pixels, modalities)
        return Image.fromarray(pixels), dicom_note
    fast = _gray8_png_fast(data, image_index, max_pixels)
    if fast is not None:
        return Image.fromarray(fast), None
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                image_index,
                f"{width}x{height} is {width * height:,} pixels, above the limit of "
                f"{max_pixels:,} (possible decompression bomb)",
            )
        image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own check, at twice its limit
        raise ImageTooLargeError(image_index, f"{exc} (possible decompression bomb)") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            image_index, f"cannot decode: not a PNG, JPEG or DICOM image (a {len(data):,}-byte file starting "
                         f"{data[:8]!r})") from exc
    except (OSError, SyntaxError, ValueError, zlib.error) as exc:
        reason = _OBJECT_REPR.sub("the file", str(exc)) or type(exc).__name__
        raise ImageDecodeError(image_index, f"cannot decode: {reason}") from exc
    return _to_gray8(image, image_index)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@functools.cache
def _fast_decoder() -> Callable[[bytes], Any] | None:
    """A PNG decoder faster than Pillow's, where installed: imagecodecs (about 20% faster on
    NIH-size PNGs; ``pip install 'cxrdask[gpu]'``). OpenCV decodes about as fast but writes
    libpng warnings for every damaged file. benchmarks/bench_pixels.py measures them."""
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs.png_decode


def _gray8_png_fast(data: bytes, image_index: str, max_pixels: int) -> np.ndarray | None:
    """An 8-bit gray PNG (nearly every NIH file) decoded by a faster library, or None to
    let Pillow decode it (other formats and modes, no fast decoder, or a decode error: Pillow
    then names the cause). Lossless: the pixels are Pillow's, bit for bit."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    decoder = _fast_decoder()
    if data[24] != 8 or data[25] != 0 or decoder is None:  # bit depth 8, gray
        return None
    if width * height > max_pixels:
        raise ImageTooLargeError(
            image_index, f"{width}x{height} is {width * height:,} pixels, above the limit of "
                         f"{max_pixels:,} (possible decompression bomb)")
    try:
        pixels = np.asarray(decoder(data))
    except Exception:  # truncated or corrupt: Pillow decodes again and reports why
        return None
    if pixels.shape != (height, width) or pixels.dtype != np.uint8:
        return None
    return pixels


def format_note(fmt: str) -> str | None:
    """The conversion note for a file of format ``fmt`` (Pillow's name): none for a PNG,
    NIH's own format; ``"JPEG file"`` and the like for others, so a run reports them."""
    return None if fmt == "PNG" else f"{fmt} file"


def _to_gray8(image: Image.Image, image_index: str) -> tuple[Image.Image, str | None]:
    mode, fmt = image.mode, image.format or "unknown"
    note = format_note(fmt)
    if mode == "L":
        return image, note
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray, low, high = scale_by_range(np.asarray(image, dtype=np.float32))
        return Image.fromarray(gray), _join(note, f"{mode} scaled to 8-bit by range {low:g}-{high:g}")
    if mode in ("RGB", "RGBA", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("L"), _join(note, f"{mode} converted to L")
    raise ImageDecodeError(image_index, f"unsupported image mode {mode!r}")


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second


def signatures(images: np.ndarray, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Each ``(n, H, W)`` uint8 image's two ``side`` x ``side`` signatures, what a store keeps
    to find an image again under another name, re-encoded or rescaled
    (:mod:`cxrdask.store.overlap`):

    - the thumbnail (uint8): the image's mean over boxes (Pillow's BOX filter), its shape;
    - the detail (int8): its fine texture, the image less its 3 x 3 box blur, sampled on a
      ``side`` x ``side`` grid. A copy keeps it (JPEG at quality 90: correlation 0.96 or
      more); two acquisitions of one patient, however alike in shape, never line it up
      (0.44 at most, on the synthetic archive's images)."""
    from PIL import ImageFilter

    n = len(images)
    thumbnails = np.empty((n, side, side), dtype=np.uint8)
    details = np.empty((n, side, side), dtype=np.int8)
    for k, pixels in enumerate(images):
        image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
        thumbnails[k] = np.asarray(image.resize((side, side), Image.Resampling.BOX))
        fine = (np.asarray(image, dtype=np.int16)
                - np.asarray(image.filter(ImageFilter.BoxBlur(1)), dtype=np.int16))
        step_y, step_x = max(1, fine.shape[0] // side), max(1, fine.shape[1] // side)
        grid = fine[step_y // 2::step_y, step_x // 2::step_x][:side, :side]
        padded = np.zeros((side, side), dtype=np.int16)
        padded[:grid.shape[0], :grid.shape[1]] = grid
        details[k] = np.clip(padded, -128, 127)
    return thumbnails, details


def resize_gray(gray: Image.Image, preprocessing: Preprocessing = Preprocessing()) -> np.ndarray:
    """Resize an ``L`` image to ``size`` x ``size`` with Pillow (antialiased): uint8 array.

    This is what a pixel store keeps, and what the device normalises; with
    ``torch-bilinear-antialias`` the decode threads skip it and hand over the full image.
    """
    size = preprocessing.size
    if preprocessing.crop == "shortest-edge" and not preprocessing.resize_on_device:
        return _shortest_edge_then_centre(gray, preprocessing)
    if preprocessing.crop in ("centre", "shortest-edge") and (gray.size[0] != gray.size[1]
                                           or preprocessing.crop_fraction != 1.0):
        top, left, side = centre_square(gray.size[1], gray.size[0], preprocessing.crop_fraction)
        gray = gray.crop((left, top, left + side, top + side))
    if gray.size == (size, size):
        return np.asarray(gray, dtype=np.uint8)
    if preprocessing.resize_on_device:  # one image (inference): torch's resize, on the CPU
        import torch

        from cxrdask.imaging.model_input import DeviceInput

        image = np.asarray(gray, dtype=np.uint8)
        return DeviceInput(torch.device("cpu"), preprocessing).resize([image])[0].numpy()
    gray = gray.resize((size, size), _resampling(preprocessing), reducing_gap=preprocessing.reducing_gap)
    return np.asarray(gray, dtype=np.uint8)


def _resampling(preprocessing: Preprocessing) -> Image.Resampling:
    return (Image.Resampling.BICUBIC if preprocessing.interpolation == BICUBIC_INTERPOLATION
            else Image.Resampling.BILINEAR)


def _shortest_edge_then_centre(gray: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """``transformers``' and torchvision's rule: the shorter side resized to ``size /
    crop_fraction`` (the aspect kept, the longer side rounded down), then the centred
    ``size`` square cropped (its corner rounded down)."""
    width, height = gray.size
    short = round(preprocessing.size / preprocessing.crop_fraction)
    new = ((short, int(short * height / width)) if width <= height
           else (int(short * width / height), short))
    if new != gray.size:
        gray = gray.resize(new, _resampling(preprocessing), reducing_gap=preprocessing.reducing_gap)
    side = preprocessing.size
    left, top = (new[0] - side) // 2, (new[1] - side) // 2
    return np.asarray(gray.crop((left, top, left + side, top + side)), dtype=np.uint8)


def to_model_input(gray: Image.Image, preprocessing: Preprocessing = Preprocessing(),
                   flip: bool = False) -> np.ndarray:
    """Resize an ``L`` image to ``size`` (antialiased) and normalise: float32 ``(channels,
    size, size)``."""
    pixels = resize_gray(gray, preprocessing).astype(np.float32) * np.float32(1.0 / 255.0)
    if flip:
        pixels = pixels[:, ::-1]
    mean = np.asarray(preprocessing.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(preprocessing.std, dtype=np.float32)[:, None, None]
    return (pixels[None, :, :] - mean) / std


def preprocess_bytes(data: bytes, image_index: str = "?",
                     preprocessing: Preprocessing = Preprocessing(), flip: bool = False
                     ) -> tuple[np.ndarray, str | None]:
    """Bytes -> normalised ``(3, size, size)`` array and the conversion note (None if plain L PNG)."""
    gray, note = decode_gray(data, image_index)
    return to_model_input(gray, preprocessing, flip), note


__all__ = ["DEFAULT_MAX_PIXELS", "decode_gray", "format_note", "preprocess_bytes", "resize_gray",
           "signatures", "to_model_input"]
