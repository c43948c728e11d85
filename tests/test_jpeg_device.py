"""JPEGs decoded on the device (nvJPEG through TorchCodec on a GPU worker): which files go
there, the batched decode equal to the host's, and an extraction whose JPEGs the device
decodes giving the host path's store, failed rows and reasons included.

No GPU here: the device is the CPU, where TorchCodec's decoder is libjpeg-turbo, the
host's own; on a GPU the same calls run nvJPEG (not run in this suite)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdask.imaging.decode import DEFAULT_MAX_PIXELS, decode_gray
from cxrdask.imaging.jpeg_device import (
    EncodedJpeg,
    decode_on_device,
    device_jpeg,
    torchcodec_installed,
)

if not torchcodec_installed():  # not installed, or built for another torch
    pytest.skip("TorchCodec's JPEG decoder does not import here", allow_module_level=True)


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _gray(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width)) * 255).astype(np.uint8)


def _header_then_garbage(whole: bytes) -> bytes:
    """A JPEG whose header reads (gray, its size) and whose scan is garbage, ending in EOI."""
    return whole[:200] + bytes(range(256)) * 3 + b"\xff\xd9"


def test_only_whole_gray_jpegs_within_the_pixel_limit_go_to_the_device():
    gray = _jpeg(_gray(96, 80))
    kept = device_jpeg(gray, DEFAULT_MAX_PIXELS)
    assert isinstance(kept, EncodedJpeg) and kept.shape == (96, 80) and kept.data == gray
    assert device_jpeg(gray[: len(gray) // 2], DEFAULT_MAX_PIXELS) is None  # truncated
    assert device_jpeg(_jpeg(np.stack([_gray(32, 32)] * 3, -1)), DEFAULT_MAX_PIXELS) is None  # RGB
    png = io.BytesIO()
    Image.fromarray(_gray(32, 32)).save(png, format="PNG")
    assert device_jpeg(png.getvalue(), DEFAULT_MAX_PIXELS) is None
    assert device_jpeg(gray, 96 * 80 - 1) is None  # the host refuses it, naming its size
    assert device_jpeg(b"\xff\xd8\xff" + b"\0" * 40 + b"\xff\xd9", DEFAULT_MAX_PIXELS) is None


def test_a_batch_decodes_as_the_host_does_and_a_refused_file_is_named_alone():
    files = [_jpeg(_gray(96, 80, 1)), _jpeg(_gray(64, 64, 2), progressive=True),
             _jpeg(_gray(120, 90, 3))]
    broken = _header_then_garbage(files[0])
    jpegs = [device_jpeg(data, DEFAULT_MAX_PIXELS) for data in [*files, broken]]
    assert all(jpeg is not None for jpeg in jpegs)
    decoded = decode_on_device(jpegs[:3], "cpu")
    for data, image in zip(files, decoded, strict=True):
        host = np.asarray(decode_gray(data, "x")[0])
        np.testing.assert_array_equal(image.numpy(), host)
    with_broken = decode_on_device(jpegs, "cpu")  # one refusal fails the batched call ...
    assert with_broken[3] is None  # ... so each file is decoded alone to find it
    for got, want in zip(with_broken[:3], decoded, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.slow
def test_an_extraction_whose_jpegs_the_device_decodes_gives_the_host_paths_store(
        tmp_path, monkeypatch):
    """A CheXpert-layout archive with a JPEG of another size, an RGB one, a truncated one and
    one whose scan is garbage, extracted with the device resizing: once with the host
    decoding every file, once with the device decoding the JPEGs it takes (in an in-process
    cluster, so the switch reaches the worker). Same features, same failed rows, same
    reasons, the same conversions reported; the device decoded every whole gray JPEG, in
    batches."""
    from distributed import Client, LocalCluster

    import cxrdask.extract.worker as worker
    from cxrdask.archive.synthetic import make_archive
    from cxrdask.extract.run import extract_features
    from cxrdask.store.features import STATUS_FAILED, FeatureStore

    archive = make_archive(str(tmp_path / "CheXpert-v1.0-small"), 24, size=96,
                           layout="chexpert", seed=3, threads=1)
    jpegs = sorted(Path(archive.root).rglob("*.jpg"))
    assert len(jpegs) == 24
    jpegs[0].write_bytes(_jpeg(_gray(120, 80, 7)))  # another shape
    jpegs[1].write_bytes(_jpeg(np.stack([_gray(96, 96, 8)] * 3, -1)))  # RGB: the host's
    whole = jpegs[2].read_bytes()
    jpegs[2].write_bytes(whole[: len(whole) // 2])  # truncated: the host's, failed
    jpegs[3].write_bytes(_header_then_garbage(jpegs[3].read_bytes()))  # the device refuses it
    batches: list[int] = []
    decoded: list[int] = []

    def counted(files, device):
        batches.append(len(files))
        images = decode_on_device(files, device)
        decoded.append(sum(image is not None for image in images))
        return images

    options = dict(weights="random", backbone="resnet18", image_size=64, resize="device",
                   device="cpu", engine="torch", precision="fp32", batch_size=4, chunk_rows=8,
                   max_failed_fraction=0.5,
                   progress=False)
    stores, summaries = {}, {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for on_device in (False, True):
            monkeypatch.setattr(worker, "decodes_jpeg_on", lambda device, on=on_device: on)
            monkeypatch.setattr(worker, "decode_on_device", counted)
            url = str(tmp_path / f"device-{on_device}.zarr")
            summaries[on_device] = extract_features(None, archive.root, url, client=client,
                                                    **options)
            stores[on_device] = FeatureStore.open(url)
    host, device = stores[False], stores[True]
    assert sum(batches) == 24 - 2 and max(batches) > 1  # every whole gray JPEG, batched
    assert sum(decoded) == 24 - 3  # all but the garbage one, which the host then refused
    np.testing.assert_array_equal(device.features.compute(), host.features.compute())
    np.testing.assert_array_equal(device.read("status"), host.read("status"))
    failed = device.read("status") == STATUS_FAILED
    assert failed.sum() == 2
    assert list(device.read("error")[failed]) == list(host.read("error")[failed])
    assert all(reason for reason in device.read("error")[failed])
    conversions = {on: sorted(summary.conversions) for on, summary in summaries.items()}
    assert conversions[True] == conversions[False] and len(conversions[True]) == 24 - 2
