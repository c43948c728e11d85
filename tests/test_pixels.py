"""The pixel store: decode once, extract many times; the device resize; the GPU paths."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdask.errors import StoreKindError, StoreMismatchError
from cxrdask.extract.plan import plan_from_pixels
from cxrdask.extract.run import cache_pixels, extract_features, extract_from_pixels
from cxrdask.imaging.decode import decode_gray, resize_gray
from cxrdask.imaging.model_input import DeviceInput
from cxrdask.imaging.preprocessing import DEVICE_INTERPOLATION, Preprocessing
from cxrdask.store.features import STATUS_FAILED, STATUS_OK, FeatureStore
from cxrdask.store.pixels import PixelStore

pytestmark = pytest.mark.slow
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _features(url: str) -> np.ndarray:
    return FeatureStore.open(url).read("features").astype(np.float32)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def broken_archive(small_archive, tmp_path_factory):
    """small_archive with one image truncated: a failed row the pixel store must carry over."""
    import shutil

    root = tmp_path_factory.mktemp("broken") / "archive"
    shutil.copytree(small_archive.root, root)
    victim = sorted(root.rglob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:200])
    return root, victim.name


def test_features_from_the_pixel_store_equal_features_from_the_pngs(
        broken_archive, cluster_client, tmp_path):
    root, victim = broken_archive
    meta = str(root / "Data_Entry_2017.csv")
    common = dict(client=cluster_client, weights="random", chunk_rows=16, progress=False,
                  split="patient")
    # One normal extraction that also keeps the pixels, one pass that only caches them.
    extract_features(meta, str(root), str(tmp_path / "png.zarr"), pixels=str(tmp_path / "by.zarr"),
                     **common)
    cached = cache_pixels(meta, str(root), str(tmp_path / "pixels.zarr"), client=cluster_client,
                          chunk_rows=16, progress=False, split="patient")
    assert cached.rows_failed == 1 and cached.failures[0][0] == victim
    by_product = PixelStore.open(str(tmp_path / "by.zarr"))
    pixels = PixelStore.open(str(tmp_path / "pixels.zarr"))
    assert np.array_equal(by_product.read("pixels"), pixels.read("pixels"))
    assert pixels.read("pixels").shape == (80, 224, 224)
    # The stored pixels are exactly what the decode threads feed the network.
    row = int(np.flatnonzero(pixels.read("image_index") != victim)[0])
    name = pixels.read("image_index")[row]
    png = next(root.rglob(name)).read_bytes()
    assert np.array_equal(pixels.read("pixels", row), resize_gray(decode_gray(png)[0]))

    summary = extract_from_pixels(str(tmp_path / "pixels.zarr"), str(tmp_path / "from.zarr"),
                                  client=cluster_client, weights="random", progress=False)
    assert summary.rows_written == 79 and summary.failures == [(victim, cached.failures[0][1])]
    from_pixels = FeatureStore.open(str(tmp_path / "from.zarr"))
    png_store = FeatureStore.open(str(tmp_path / "png.zarr"))
    assert list(from_pixels.read("image_index")) == list(png_store.read("image_index"))
    assert from_pixels.chunk_rows == 16
    ok = png_store.read("status") == STATUS_OK
    assert np.array_equal(_features(str(tmp_path / "png.zarr"))[ok],
                          _features(str(tmp_path / "from.zarr"))[ok])
    assert (from_pixels.read("status") == STATUS_FAILED).sum() == 1
    assert from_pixels.provenance["archive"]["pixels"]["url"] == str(tmp_path / "pixels.zarr")


def test_a_pixel_store_is_refused_for_another_resize_and_as_a_feature_store(
        small_archive, cluster_client, tmp_path):
    url = str(tmp_path / "pixels.zarr")
    cache_pixels(small_archive.metadata_url, small_archive.root, url, client=cluster_client,
                 progress=False, split="patient")
    before = _tree_digest(tmp_path)
    with pytest.raises(StoreMismatchError, match="torch-bilinear-antialias"):
        plan_from_pixels(url, str(tmp_path / "f.zarr"), weights="random", resize="device")
    with pytest.raises(StoreKindError, match="pixels store"):
        FeatureStore.open(url)
    with pytest.raises(StoreMismatchError, match="interpolation"):  # resuming with other settings
        cache_pixels(small_archive.metadata_url, small_archive.root, url, client=cluster_client,
                     progress=False, split="patient", resize="device")
    assert _tree_digest(tmp_path) == before


def test_cache_resumes_and_the_cli_extracts_from_it(small_archive, cluster_client, tmp_path):
    store, pixels = str(tmp_path / "f.zarr"), str(tmp_path / "p.zarr")
    cli = [sys.executable, "-m", "cxrdask.cli"]
    cache = subprocess.run([*cli, "cache", "--images", small_archive.root, "--store", pixels,
                            "--workers", "1", "--chunk-rows", "40", "--quiet",
                            "--dashboard-address", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=300)
    assert cache.returncode == 0, cache.stderr
    assert "80 written, 0 failed" in cache.stdout
    again = cache_pixels(small_archive.metadata_url, small_archive.root, pixels,
                         client=cluster_client, progress=False)
    assert (again.chunks_run, again.chunks_skipped) == (0, 2)
    extract = subprocess.run([*cli, "extract", "--source", pixels, "--store", store, "--weights",
                              "random", "--backbone", "resnet18", "--workers", "1", "--quiet",
                              "--dashboard-address", "127.0.0.1:0"],
                             capture_output=True, text=True, timeout=300)
    assert extract.returncode == 0, extract.stderr
    assert "images read from" in extract.stdout and "80 written" in extract.stdout
    info = subprocess.run([*cli, "info", pixels], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "pixel store" in info.stdout and "80 x 224² uint8" in info.stdout
    both = subprocess.run([*cli, "extract", "--source", pixels, "--images", small_archive.root,
                           "--store", store], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "leave out --images" in both.stderr


def test_device_resize_is_within_a_gray_level_of_pillow(small_archive):
    """torch's antialiased resize (what GPU nodes use) against Pillow's, on real-size input."""
    rng = np.random.default_rng(0)
    image = (rng.random((1024, 1024)) * 40 + np.linspace(0, 200, 1024)[None, :]).astype(np.uint8)
    from PIL import Image

    pillow = resize_gray(Image.fromarray(image), Preprocessing())
    device = DeviceInput(torch.device("cpu"), Preprocessing(interpolation=DEVICE_INTERPOLATION))
    torch_resized = device.resize([image])[0].numpy()
    difference = np.abs(pillow.astype(int) - torch_resized.astype(int))
    assert difference.mean() < 1.0 and difference.max() <= 3
    # Mixed sizes are resized one by one, same result as alone.
    small = image[:512, :768]
    both = device.resize([image, small]).numpy()
    assert np.array_equal(both[0], torch_resized)
    assert np.array_equal(both[1], device.resize([small])[0].numpy())


def test_device_normalisation_matches_the_numpy_path():
    from cxrdask.imaging.decode import to_model_input

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (224, 224), dtype=np.uint8)
    from PIL import Image

    converter = DeviceInput(torch.device("cpu"), Preprocessing())
    for flip in (False, True):
        expected = to_model_input(Image.fromarray(image), Preprocessing(), flip)
        got = converter.normalise(torch.from_numpy(image[None]), [flip])[0].numpy()
        assert np.array_equal(got, expected)


@pytest.mark.gpu
@needs_cuda
def test_gpu_features_from_the_pixel_store_match_the_pngs(small_archive, tmp_path):
    from cxrdask.runtime.cluster import local_client

    with local_client(n_workers=1, dashboard_address="127.0.0.1:0", announce=False) as client:
        png = extract_features(small_archive.metadata_url, small_archive.root,
                               str(tmp_path / "png.zarr"), client=client, weights="random",
                               device="cuda", precision="fp16", batch_size=64, progress=False,
                               pixels=str(tmp_path / "p.zarr"))
        cpu_resize = extract_from_pixels(str(tmp_path / "p.zarr"), str(tmp_path / "from.zarr"),
                                         client=client, weights="random", device="cuda",
                                         precision="fp16", batch_size=64, progress=False)
        device_resize = extract_features(small_archive.metadata_url, small_archive.root,
                                         str(tmp_path / "dev.zarr"), client=client,
                                         weights="random", device="cuda", precision="fp16",
                                         batch_size=64, progress=False, resize="device")
    assert png.rows_written == cpu_resize.rows_written == device_resize.rows_written == 80
    a, b = _features(str(tmp_path / "png.zarr")), _features(str(tmp_path / "from.zarr"))
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)  # fp16 tolerance
    c = _features(str(tmp_path / "dev.zarr"))
    cosine = (a * c).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)
    assert cosine.min() > 0.999
    assert FeatureStore.open(str(tmp_path / "dev.zarr")).provenance["preprocessing"][
        "interpolation"] == DEVICE_INTERPOLATION


@pytest.mark.gpu
@needs_cuda
def test_the_head_trains_on_the_gpu_from_lazy_chunks(tmp_path):
    from cxrdask.head.model import load_checkpoint
    from cxrdask.head.train import TrainConfig, train_head
    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 4000, signal=0.5)
    config = TrainConfig(epochs=3, early_stopping=None)
    gpu = train_head(url, config, tmp_path / "gpu", progress=False, plot=False, device="cuda")
    cpu = train_head(url, config, tmp_path / "cpu", progress=False, plot=False, device="cpu")
    assert abs(gpu.best_val_loss - cpu.best_val_loss) < 0.02 * cpu.best_val_loss
    checkpoint = load_checkpoint(gpu.checkpoint)
    assert all(t.device.type == "cpu" for t in checkpoint.head.state_dict().values())


def test_the_fast_png_decoder_gives_pillows_pixels_and_pillows_errors(small_archive):
    """imagecodecs (where installed) decodes 8-bit gray PNGs; a damaged file still fails
    with the cause Pillow names."""
    import io

    from PIL import Image

    from cxrdask.errors import ImageDecodeError
    from cxrdask.imaging import decode as imaging

    pytest.importorskip("imagecodecs")
    assert imaging._fast_decoder() is not None, "imagecodecs is installed but not used"
    data = next(Path(small_archive.root).rglob("*.png")).read_bytes()
    fast, note = decode_gray(data, "x.png")
    assert note is None
    assert np.array_equal(np.asarray(fast), np.asarray(Image.open(io.BytesIO(data)).convert("L")))
    assert imaging._gray8_png_fast(data, "x.png", imaging.DEFAULT_MAX_PIXELS) is not None
    with pytest.raises(ImageDecodeError, match=r"x\.png.*(truncated|cannot decode)"):
        decode_gray(data[: len(data) // 2], "x.png")


def test_resident_batches_give_every_row_once_per_epoch(tmp_path):
    """A split that fits is kept after one lazy pass; later epochs reshuffle it in memory."""
    from cxrdask.head.batches import FeatureBatches
    from cxrdask.head.resident import ResidentBatches
    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 600, feature_dim=16, chunk_rows=64, signal=0.5)
    lazy = FeatureBatches(url, "train", 50, seed=0)
    resident = ResidentBatches(FeatureBatches(url, "train", 50, seed=0), torch.device("cpu"),
                               shuffle=True, seed=0)
    assert ResidentBatches.fits(lazy, torch.device("cpu"), 1)
    assert not ResidentBatches.fits(lazy, torch.device("cpu"), 0)
    assert not ResidentBatches.fits(lazy, torch.device("cpu"), 0.01)

    def rows(batches) -> list[tuple]:
        return sorted(tuple(r) for x, _ in batches for r in x.numpy().round(4).tolist())

    first = rows(resident)
    orders = []
    for epoch in (1, 2):
        resident.set_epoch(epoch)
        assert rows(resident) == first
        orders.append(torch.cat([x[:, 0].clone() for x, _ in resident]).tolist())  # reused
    assert first == rows(lazy) and len(first) == lazy.n_rows
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_resident_batches_equal_the_lazy_readers_bit_for_bit(tmp_path):
    """Kept as float16 features (half the memory), widened and standardised on each gather
    with the lazy reader's own operations: every row equal, not merely close."""
    from cxrdask.head.batches import FeatureBatches
    from cxrdask.head.resident import ResidentBatches
    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 500, feature_dim=16, chunk_rows=64, signal=0.5)
    mean, scale = torch.linspace(-1, 1, 18), torch.linspace(0.5, 3, 18)

    def standardised(batches: FeatureBatches) -> FeatureBatches:
        batches.standardise(mean, scale)
        return batches

    def rows(batches) -> np.ndarray:
        out = np.concatenate([x.numpy().copy() for x, _ in batches])
        return out[np.lexsort(out.T[::-1])]

    lazy = rows(standardised(FeatureBatches(url, "train", 40, seed=0)))
    resident = ResidentBatches(standardised(FeatureBatches(url, "train", 40, seed=0)),
                               torch.device("cpu"), shuffle=True, seed=0)
    assert np.array_equal(rows(resident), lazy)  # the first, lazy pass
    resident.set_epoch(1)
    assert np.array_equal(rows(resident), lazy)  # from memory
    assert resident.features is not None and resident.features.dtype == torch.float16
    assert resident.batches.standardisation is not None  # given back after the first pass


def test_the_kept_splits_share_one_budget_and_auto_is_half_the_available_memory(tmp_path,
                                                                                monkeypatch):
    """The training split is kept first, the validation split where what is left still
    holds it; ``auto`` is half of psutil's available memory; each choice says why."""
    import psutil

    from cxrdask.head.batches import FeatureBatches
    from cxrdask.head.resident import ResidentBatches, keep_where_they_fit, resident_budget_mb
    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 3000, feature_dim=256, chunk_rows=256)
    cpu = torch.device("cpu")

    def feeds() -> dict:
        return {name: FeatureBatches(url, name, 64, seed=0) for name in ("train", "validation")}

    train_mib = ResidentBatches.nbytes(feeds()["train"]) / 2**20
    just_train = feeds()
    chosen = keep_where_they_fit(just_train, cpu, train_mib + 0.01, seed=0)
    assert isinstance(just_train["train"], ResidentBatches)
    assert isinstance(just_train["validation"], FeatureBatches)  # the rest no longer holds it
    assert "kept in memory" in chosen["train"] and "read lazily" in chosen["validation"]
    lazy = feeds()
    assert all("read lazily" in why for why in keep_where_they_fit(lazy, cpu, 0, seed=0).values())
    assert all(isinstance(b, FeatureBatches) for b in lazy.values())

    class Memory:
        available = 6 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    assert resident_budget_mb("auto") == 3 * 1024
    both = feeds()
    keep_where_they_fit(both, cpu, "auto", seed=0)
    assert all(isinstance(b, ResidentBatches) for b in both.values())
