"""The synthetic archive (layout, determinism, realism) and the image decoder."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrdask.archive.labels import LABELS
from cxrdask.archive.synthetic import (
    NIH_COUNTS,
    encode_png,
    image_folder,
    make_archive,
    make_metadata,
    render_image,
    sample_labels,
)
from cxrdask.errors import ImageDecodeError
from cxrdask.imaging.decode import decode_gray, preprocess_bytes
from cxrdask.imaging.preprocessing import Preprocessing, flip_for


def test_layout_and_lists(small_archive):
    root = small_archive.root
    pngs = sorted(os.listdir(os.path.join(root, "images_001", "images")))
    assert len(pngs) == small_archive.n_images
    train_val = Path(root, "train_val_list.txt").read_text().split()
    test = Path(root, "test_list.txt").read_text().split()
    assert sorted(train_val + test) == pngs and not set(train_val) & set(test)
    with Image.open(os.path.join(root, "images_001", "images", pngs[0])) as image:
        assert image.mode == "L" and image.size == (128, 128)
    assert image_folder(9_999) == "images_001/images" and image_folder(10_000) == "images_002/images"


def test_metadata_like_nih():
    frame = make_metadata(20_000, seed=0)
    assert frame["patient_id"].nunique() < len(frame) / 2.5  # several images per patient
    assert (frame["age"] > 123).sum() >= 1  # a few impossible ages, as in the 2017 file
    names = frame["image_index"].str.slice(9, 12).astype(int)
    assert (names != frame["follow_up"]).any()  # follow-up does not always match the name


def test_label_prevalence_close_to_nih():
    labels = sample_labels(112_120, np.random.default_rng(0))
    no_finding = int((labels.sum(axis=1) == 0).sum())
    assert abs(no_finding - 60_361) / 60_361 < 0.02
    for position, name in enumerate(LABELS):
        expected = NIH_COUNTS[name]
        assert abs(int(labels[:, position].sum()) - expected) < max(0.06 * expected, 40), name
    assert (labels.sum(axis=1) > 1).mean() > 0.1  # co-occurrence


def test_deterministic_and_signs_visible():
    plain = np.zeros(14, dtype=np.uint8)
    cardiomegaly = plain.copy()
    cardiomegaly[LABELS.index("Cardiomegaly")] = 1
    a = render_image(plain, size=256, seed=(1, 2))
    np.testing.assert_array_equal(a, render_image(plain, size=256, seed=(1, 2)))
    b = render_image(cardiomegaly, size=256, seed=(1, 2))
    heart_band = (slice(140, 180), slice(60, 200))
    assert b[heart_band].mean() > a[heart_band].mean() + 5
    none = render_image(cardiomegaly, size=256, seed=(1, 2), strength=0.0)
    np.testing.assert_array_equal(none, a)


def test_full_size_png_compresses_like_real():
    sizes = [len(encode_png(render_image(np.zeros(14, np.uint8), 1024, seed=i))) for i in range(2)]
    assert all(200_000 < s < 500_000 for s in sizes), sizes


def test_same_seed_same_bytes(tmp_path):
    one = make_archive(str(tmp_path / "a"), n=6, size=64, seed=9, threads=1)
    two = make_archive(str(tmp_path / "b"), n=6, size=64, seed=9, threads=2)
    for name in os.listdir(tmp_path / "a" / "images_001" / "images"):
        assert (tmp_path / "a/images_001/images" / name).read_bytes() == \
               (tmp_path / "b/images_001/images" / name).read_bytes()
    assert one.n_images == two.n_images == 6


def png_bytes(array, mode=None, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


GRAY = (np.arange(300 * 200).reshape(200, 300) % 251).astype(np.uint8)


@pytest.mark.parametrize("mode, note", [(None, None), ("RGBA", "RGBA converted to L"),
                                        ("RGB", "RGB converted to L")])
def test_decode_modes(mode, note):
    image, made = decode_gray(png_bytes(GRAY, mode), "x.png")
    assert image.mode == "L" and made == note
    np.testing.assert_array_equal(np.asarray(image), GRAY)


def test_decode_16_bit_scaled_by_range():
    deep = (GRAY.astype(np.uint16) * 200 + 1000)
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, format="PNG")
    image, note = decode_gray(buffer.getvalue(), "deep.png")
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255 and "scaled to 8-bit" in note


def test_jpeg_named_png_is_decoded_and_noted():
    image, note = decode_gray(png_bytes(GRAY, fmt="JPEG"), "x.png")
    assert image.mode == "L" and note == "JPEG file"


@pytest.mark.parametrize("data, reason", [(b"", "empty file"), (b"\x89PNG\r\n\x1a\nxxxx", "cannot"),
                                          (os.urandom(500), "cannot")])
def test_undecodable_raises_typed_error(data, reason):
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_gray(data, "bad.png")
    assert info.value.image_index == "bad.png"
    assert "bad.png" in str(info.value) and "object at 0x" not in str(info.value)


def test_truncated_png():
    data = png_bytes(GRAY)
    with pytest.raises(ImageDecodeError) as info:
        decode_gray(data[: len(data) // 2], "cut.png")
    assert "cut.png" in str(info.value) and "object at 0x" not in str(info.value)


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_gray(png_bytes(GRAY), "bomb.png", max_pixels=1000)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(data):
    with contextlib.suppress(ImageDecodeError):
        decode_gray(data, "fuzz.png")


def test_preprocess_shape_normalisation_and_flip():
    data = png_bytes(GRAY)
    array, _ = preprocess_bytes(data, "x.png")
    assert array.shape == (3, 224, 224) and array.dtype == np.float32
    prep = Preprocessing()
    expected = (np.asarray(Image.fromarray(GRAY).resize((224, 224), Image.BILINEAR,
                                                        reducing_gap=2.0)) / 255.0 - 0.485) / 0.229
    np.testing.assert_allclose(array[0], expected, atol=1e-5)
    flipped, _ = preprocess_bytes(data, "x.png", prep, flip=True)
    np.testing.assert_array_equal(flipped, array[:, :, ::-1])
    assert flip_for("a.png", 0) == flip_for("a.png", 0)
    assert {flip_for(f"{i}.png", 0) for i in range(20)} == {True, False}
