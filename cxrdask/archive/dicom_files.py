"""What a DICOM file is, by its bytes and by its name, and the reader it needs.

Known before any pixel is decoded: a Part 10 file has ``DICM`` after its 128-byte preamble;
an older export's bare dataset starts with a little-endian element of group 0x0002 or
0x0008; a file named ``.dcm`` or ``.dicom`` is one. Reading any of them needs pydicom (the
``dicom`` extra), which is checked before a run starts. The archive's readers (headers) and
the imaging room (pixels) both start here.
"""

from __future__ import annotations

from cxrdask.errors import MissingExtraError

DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble (DICOM PS3.10)
DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    return len(data) >= 132 and data[128:132] == DICOM_MAGIC


def looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM dataset written without the Part 10 preamble and ``DICM`` (older exports):
    it starts with a little-endian element of group 0x0002 (file meta) or 0x0008."""
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00"


def check_dicom_reader(paths) -> None:
    """Before a run: where any image is a DICOM file by its name, pydicom must be there
    (:class:`~cxrdask.errors.MissingExtraError` otherwise, before any worker starts)."""
    if any(str(path).lower().endswith(DICOM_SUFFIXES) for path in paths):
        require_pydicom()


def require_pydicom():
    """pydicom with its pixel handlers, or :class:`~cxrdask.errors.MissingExtraError` saying
    which extra to install."""
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise MissingExtraError("reading DICOM files needs pydicom and its pixel handlers: "
                                "pip install 'cxrdask[dicom]'") from None
    return pydicom


__all__ = ["DICOM_MAGIC", "DICOM_SUFFIXES", "check_dicom_reader", "is_dicom",
           "looks_like_bare_dicom", "require_pydicom"]
