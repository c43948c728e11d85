"""DICOM bytes -> 8-bit gray pixels, as a radiologist's viewer would show them.

pydicom reads the file; its pixel handlers (pylibjpeg with -libjpeg and -openjpeg, or gdcm)
decode every compressed transfer syntax they know: JPEG baseline, extended and lossless,
JPEG-LS, JPEG 2000, RLE, deflate. Then, in DICOM's order: the modality LUT (rescale slope
and intercept), the VOI LUT or window (centre and width, the first where there are
several), ``MONOCHROME1`` inverted (so bone is bright in every file), and the full range
scaled to 8 bits. ``BitsStored`` is respected by pydicom (a 12-bit image in 16-bit words is
not read as 16-bit).

JPEG Extended with 12-bit samples (older CR exports) is decoded by GDCM itself
(``python-gdcm``, in the ``dicom`` extra) where pydicom's plugins all refuse it: pydicom's
GDCM plugin turns 12-bit JPEG Extended away, and libjpeg refuses files whose scan header is
not quite sequential (pydicom's own ``JPEG-lossy.dcm``), which GDCM's IJG decoder reads
with a warning, giving pydicom's reference values.

What is not a chest radiograph is refused with the reason: a multi-frame object, one without
pixels, and one whose ``Modality`` is not a projection radiograph's (CR or DX; a CT or MR
slice, a secondary capture of a report), unless the caller allows its modality. A file that
cannot be decoded raises :class:`~cxrdask.errors.ImageDecodeError`, so it becomes a failed
row with its reason.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np

from cxrdask.archive.dicom_files import (
    DICOM_MAGIC,
    check_dicom_reader,
    is_dicom,
    looks_like_bare_dicom,
    require_pydicom,
)
from cxrdask.errors import ImageDecodeError, ImageTooLargeError, NotARadiographError
from cxrdask.imaging.preprocessing import scale_by_range

PROJECTION_MODALITIES = ("CR", "DX")  # computed and digital radiography
ANY_MODALITY = "any"
_JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"


Modalities = Sequence[str] | str
"""DICOM modalities read as chest radiographs: a list of codes (``("CR", "DX")``), the same
as one comma-separated string (``"CR,DX,OT"``), or ``"any"``."""


def check_modalities(modalities: Modalities) -> tuple[str, ...] | None:
    """``modalities`` as upper-case codes, or None for ``any``; anything else refused
    (:class:`~cxrdask.errors.OptionError`)."""
    from cxrdask.errors import OptionError

    if isinstance(modalities, str):
        if modalities.strip().lower() == ANY_MODALITY:
            return None
        modalities = modalities.split(",")
    codes = tuple(str(code).strip().upper() for code in modalities)
    if not codes or not all(code.isalnum() and len(code) <= 16 for code in codes):
        raise OptionError(f"modalities must be 'any' or DICOM modality codes such as CR,DX, "
                          f"not {modalities!r}")
    return codes


def modality_refusal(modality: str, allowed: tuple[str, ...] | None) -> str | None:
    """Why a DICOM object of ``modality`` is not read as a chest radiograph (None: it is).
    An object without a Modality is read: older exports leave it out."""
    if allowed is None or not modality or modality.upper() in allowed:
        return None
    return (f"DICOM of modality {modality} is not a projection radiograph (read: "
            f"{', '.join(allowed)}); allow it with modalities (--modalities {','.join(allowed)},"
            f"{modality})")


def decode_dicom(data: bytes, image_index: str = "?", max_pixels: int | None = None,
                 modalities: Modalities = PROJECTION_MODALITIES) -> tuple[np.ndarray, str]:
    """A DICOM file's image as uint8 gray (bone bright), and a note of what was done.

    Raises
    ------
    ImageDecodeError
        Not decodable (truncated, no handler for its transfer syntax), no pixel data, more
        than one frame, or a modality not in ``modalities``; the reason names which.
    """
    pydicom = require_pydicom()
    with warnings.catch_warnings():  # pydicom warns about every non-conformant element
        warnings.simplefilter("ignore")
        return _decode(pydicom, data, image_index, max_pixels, check_modalities(modalities))


def _decode(pydicom, data: bytes, image_index: str, max_pixels: int | None,
            modalities: tuple[str, ...] | None) -> tuple[np.ndarray, str]:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not is_dicom(data))
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise ImageDecodeError(image_index, f"cannot read DICOM: {exc}") from exc
    modality = str(ds.get("Modality", "") or "")
    refused = modality_refusal(modality, modalities)
    if refused:
        raise NotARadiographError(image_index, refused, modality)
    if "PixelData" not in ds:
        sop = getattr(ds.get("SOPClassUID"), "name", ds.get("SOPClassUID", "unknown"))
        raise ImageDecodeError(image_index, f"DICOM without pixel data (SOP class {sop}): not an image")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(image_index, f"DICOM with a bad image header: {exc}") from exc
    if frames > 1:
        raise ImageDecodeError(image_index, f"multi-frame DICOM ({frames} frames): a chest "
                                            "radiograph has one")
    if max_pixels is not None and rows * columns > max_pixels:
        raise ImageTooLargeError(image_index, f"{columns}x{rows} is {rows * columns:,} pixels, "
                                              f"above the limit of {max_pixels:,}")
    if "TransferSyntaxUID" not in ds.get("file_meta", {}):  # a bare dataset: uncompressed,
        _set_syntax_from_encoding(pydicom, ds)  # in the encoding pydicom read it with
    syntax = ds.file_meta.get("TransferSyntaxUID")
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        pixels = _gdcm_pixels(ds, data) if str(syntax) == _JPEG_EXTENDED_12BIT else None
        if pixels is None:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImageDecodeError(image_index, f"cannot decode DICOM pixels ({syntax_name}): "
                                                f"{reason}") from exc
        syntax_name += ", by GDCM"
    return _to_gray8(ds, pixels, syntax_name)


def _gdcm_pixels(ds, data: bytes) -> np.ndarray | None:
    """A 12-bit JPEG Extended frame decoded by GDCM's own reader (None: GDCM is not installed
    or cannot read it either). GDCM reads files by name, so the bytes go to a temporary
    file first. Its libjpeg prints a warning or two to the process's stderr on the way
    (``Unsupported JPEG data precision 12`` from the 8-bit decoder it tries first)."""
    try:
        import gdcm
    except ImportError:
        return None
    gdcm.Trace.WarningOff()
    with tempfile.NamedTemporaryFile(suffix=".dcm", delete=False) as handle:
        handle.write(data)
    try:
        reader = gdcm.ImageReader()
        reader.SetFileName(handle.name)
        if not reader.Read():
            return None
        image = reader.GetImage()
        raw = image.GetBuffer()
    finally:
        os.unlink(handle.name)
    if raw is None:
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.int16 if signed else np.uint16
    values = np.frombuffer(raw.encode("utf-8", "surrogateescape"), dtype=dtype)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if values.size != rows * columns:
        return None
    return values.reshape(rows, columns)


def _set_syntax_from_encoding(pydicom, ds) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _to_gray8(ds, pixels: np.ndarray, syntax_name: str) -> tuple[np.ndarray, str]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    notes = [f"DICOM, {syntax_name}"]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour (RGB, or YBR already converted to RGB by pydicom)
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        notes.append(f"{photometric} converted to gray")
    else:
        pixels = apply_modality_lut(pixels, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            pixels = apply_voi_lut(pixels, ds, index=0)
            notes.append("VOI LUT applied" if "VOILUTSequence" in ds else "window applied")
    pixels = np.asarray(pixels, dtype=np.float64)
    if photometric == "MONOCHROME1":  # mirrored within its own range, which stays the same
        pixels = float(pixels.min()) + float(pixels.max()) - pixels
        notes.append("MONOCHROME1 inverted")
    gray, low, high = scale_by_range(pixels)
    notes.append(f"range {low:g}-{high:g} scaled to 8-bit")
    return gray, "; ".join(notes)


__all__ = ["ANY_MODALITY", "DICOM_MAGIC", "PROJECTION_MODALITIES", "Modalities",
           "check_dicom_reader", "check_modalities", "decode_dicom", "is_dicom",
           "looks_like_bare_dicom", "modality_refusal"]
