"""DICOM and 16-bit images: every encoding pydicom's handlers decode, MONOCHROME1, refusals.

pydicom ships real DICOM files of many transfer syntaxes (its ``data/test_files``); each is
decoded here as a worker decodes an image, so an unreadable one must raise
ImageDecodeError (a failed row with its reason), never anything else.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdask.errors import ImageDecodeError
from cxrdask.imaging.decode import decode_gray

pydicom = pytest.importorskip("pydicom")
from cxrdask.archive.synthetic.layouts import DICOM_SYNTAXES, encode_dicom, encode_image  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _dicom_files() -> list[Path]:
    return sorted(p for p in TEST_FILES.rglob("*")
                  if p.is_file() and p.read_bytes()[128:132] == b"DICM")


def test_every_shipped_dicom_is_a_gray_image_or_a_reason():
    """Every modality allowed: this is about the decoders (pydicom's files are CT, MR, NM,
    ..., which extraction turns away by default: test_dicom_headers.py)."""
    decoded, syntaxes, refused = 0, set(), {}
    for path in _dicom_files():
        data = path.read_bytes()
        try:
            gray, note = decode_gray(data, path.name, modalities="any")
        except ImageDecodeError as exc:
            refused[path.name] = str(exc)
            continue
        assert gray.mode == "L" and gray.size[0] > 0
        decoded += 1
        syntaxes.add(note.split(";")[0])
    assert decoded >= 40
    assert len(syntaxes) >= 12, syntaxes  # a dozen encodings, compressed ones among them
    for name in ("JPEG Baseline", "JPEG Extended", "JPEG Lossless", "JPEG-LS Lossless",
                 "JPEG-LS Lossy", "JPEG 2000 Image Compression (Lossless Only)", "RLE Lossless",
                 "Deflated Explicit VR Little Endian", "Explicit VR Big Endian",
                 "Implicit VR Little Endian"):
        assert any(name in s for s in syntaxes), name
    assert "multi-frame DICOM (15 frames)" in refused["rtdose.dcm"]
    assert "without pixel data" in refused["rtplan.dcm"]
    assert "cannot decode DICOM pixels" in refused["MR_truncated.dcm"]


def test_twelve_bit_jpeg_extended_decodes_through_gdcm_to_pydicoms_reference_values():
    """pydicom's ``JPEG-lossy.dcm`` (12-bit JPEG Extended whose scan header says Se=0): every
    pydicom plugin refuses it (GDCM's for 12 bits, libjpeg for the header); GDCM's own
    reader decodes it to the values pydicom's pixel reference gives for it (244 at
    [420, 140], 95 at [230, 120])."""
    pytest.importorskip("gdcm")
    from cxrdask.imaging.dicom import _gdcm_pixels

    data = (TEST_FILES / "JPEG-lossy.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    with pytest.raises(Exception, match="all available plugins"):
        ds.pixel_array  # noqa: B018 - what pydicom alone does with it
    pixels = _gdcm_pixels(ds, data)
    assert pixels is not None and pixels.shape == (1024, 256)
    assert pixels[420, 140] == 244 and pixels[230, 120] == 95
    gray, note = decode_gray(data, "lossy", modalities="any")  # an NM image
    assert "JPEG Extended" in note and "by GDCM" in note and gray.size == (256, 1024)


def test_a_truncated_file_is_a_decode_error_naming_the_image():
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    with pytest.raises(ImageDecodeError, match=r"cut\.dcm.*cannot"):
        decode_gray(data[: len(data) // 2], "cut.dcm", modalities="any")


@pytest.mark.parametrize("syntax", DICOM_SYNTAXES)
def test_monochrome1_gives_the_pixels_of_its_monochrome2_original(syntax):
    rng = np.random.default_rng(1)
    stored = rng.integers(200, 3900, (48, 40)).astype(np.uint16)
    original, _ = decode_gray(encode_dicom(stored, syntax, "MONOCHROME2"), "a")
    inverted, note = decode_gray(encode_dicom(stored, syntax, "MONOCHROME1"), "b")
    assert "MONOCHROME1 inverted" in note
    np.testing.assert_array_equal(np.asarray(inverted), np.asarray(original))
    assert np.asarray(original).min() == 0 and np.asarray(original).max() == 255


def test_rescale_and_window_are_applied_in_dicoms_order():
    from pydicom.dataset import Dataset

    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    ds = pydicom.dcmread(io.BytesIO(encode_dicom(stored)))
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024  # modality LUT: 2 x - 1024
    ds.WindowCenter, ds.WindowWidth = 1024, 2048  # shows -> [0, 2048] of the rescaled values
    buffer = io.BytesIO()
    ds.save_as(buffer)
    gray, note = decode_gray(buffer.getvalue(), "w")
    assert "window applied" in note and isinstance(ds, Dataset)
    pixels = np.asarray(gray).astype(int)
    rescaled = 2 * stored.astype(int) - 1024
    assert (pixels[rescaled <= 0] == 0).all() and (pixels[rescaled >= 2048] == 255).all()
    inside = (rescaled > 100) & (rescaled < 1900)
    expected = (rescaled[inside] / 2048 * 255)
    assert np.abs(pixels[inside] - expected).max() <= 2


def test_a_16_bit_png_keeps_its_whole_range():
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (50, 60)).astype(np.uint8)
    pixels[0, 0], pixels[0, 1] = 0, 255
    data = encode_image(pixels, "png16")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    gray, note = decode_gray(data, "p16")
    assert "scaled to 8-bit by range 0-4080" in note  # 12 bits in 16, rescaled, not clipped
    np.testing.assert_array_equal(np.asarray(gray), pixels)


def test_a_dataset_written_without_the_preamble_still_decodes():
    """Older exports write the bare dataset (no 128-byte preamble, no ``DICM``, no file
    meta): read in the encoding it was written with, the same image."""
    stored = np.random.default_rng(3).integers(0, 4096, (32, 40)).astype(np.uint16)
    full = encode_dicom(stored)
    dataset = pydicom.dcmread(io.BytesIO(full))
    dataset.preamble = None
    del dataset.file_meta
    for implicit in (False, True):
        buffer = io.BytesIO()
        dataset.save_as(buffer, implicit_vr=implicit, little_endian=True)
        bare = buffer.getvalue()
        assert bare[128:132] != b"DICM"
        gray, note = decode_gray(bare, "bare")
        assert ("Implicit" if implicit else "Explicit") in note
        np.testing.assert_array_equal(np.asarray(gray), np.asarray(decode_gray(full, "full")[0]))
