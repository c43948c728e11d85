"""Distributed extraction on a real 2-process LocalCluster: equality, resume, model caching."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from cxrdask.archive.images import locate_images
from cxrdask.archive.kinds.nih import read_metadata
from cxrdask.backbones.runner import BackboneSpec, cached_runners
from cxrdask.errors import ImageDecodeError, StoreMismatchError
from cxrdask.extract.run import extract_features
from cxrdask.store.features import STATUS_FAILED, FeatureStore
from cxrdask.testing import direct_features

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clean_store(small_archive, cluster_client, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("clean") / "features.zarr")
    # fp32 PyTorch: compared with a direct computation in this process (bf16 results move
    # with the number of threads); the runs that resume it ask for "auto", which keeps both.
    summary = extract_features(small_archive.metadata_url, small_archive.root, url,
                               client=cluster_client, weights="random", chunk_rows=16,
                               precision="fp32", engine="torch", progress=False)
    return url, summary


def test_cluster_features_equal_direct_computation(small_archive, clean_store):
    url, summary = clean_store
    assert summary.rows_failed == 0 and summary.chunks_run == summary.chunks_total == 5
    assert summary.rows_written == FeatureStore.open(url).n_rows
    store = FeatureStore.open(url)
    names = store.table(["image_index"])["image_index"].tolist()
    urls = locate_images(small_archive.root).urls_for(names)
    expected = direct_features(urls, BackboneSpec("resnet50", "random", 0))
    got = store.features.compute().astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-2)  # float16 storage
    assert store.provenance["complete"] is True
    per_worker = summary.per_worker()
    assert len(per_worker) == 2 and per_worker["images"].sum() == store.n_rows
    assert (per_worker["forward_s"] > 0).all()


def test_rows_are_stored_by_split(small_archive, clean_store):
    store = FeatureStore.open(clean_store[0])
    codes = store.array("split")[:]
    assert (np.diff(codes.astype(int)) >= 0).all()  # train, then validation, then test
    frame = store.table()
    metadata = read_metadata(small_archive.metadata_url)
    assert sorted(frame["image_index"]) == sorted(metadata["image_index"])
    assert store.provenance["split"]["method"] == "official"


def test_backbone_built_once_per_worker(small_archive, cluster_client, tmp_path):
    spec = BackboneSpec("resnet50", "random", 77)  # a spec no other test uses
    summary = extract_features(small_archive.metadata_url, small_archive.root,
                               str(tmp_path / "f.zarr"), client=cluster_client, weights="random",
                               weights_seed=77, chunk_rows=8, progress=False)
    assert summary.chunks_run == 10  # many tasks ...
    held = cluster_client.run(cached_runners)
    per_worker = [sum(key.spec == spec for key in keys) for keys in held.values()]
    assert per_worker == [1, 1]  # ... one runner (one model build) per worker process


def test_resume_recomputes_only_unmarked_chunks(small_archive, cluster_client, clean_store,
                                                tmp_path):
    url = str(tmp_path / "resumed.zarr")
    shutil.copytree(clean_store[0], url)
    store = FeatureStore.open(url, mode="r+")
    # Chunks 1 and 3: data written (here: garbage) but the marker never was.
    for chunk in (1, 3):
        start, stop = store.chunk_bounds(chunk)
        store.group["features"][start:stop] = 7.0
        store.group["done"][chunk] = False
    summary = extract_features(small_archive.metadata_url, small_archive.root, url,
                               client=cluster_client, weights="random", chunk_rows=16,
                               progress=False)
    assert (summary.chunks_run, summary.chunks_skipped) == (2, 3)
    assert sorted(summary.timings["chunk"]) == [1, 3]
    assert "3 skipped as already done" in str(summary)
    np.testing.assert_array_equal(FeatureStore.open(url).features.compute(),
                                  FeatureStore.open(clean_store[0]).features.compute())


def test_other_settings_refused(small_archive, cluster_client, clean_store, tmp_path):
    url = str(tmp_path / "copy.zarr")
    shutil.copytree(clean_store[0], url)
    with pytest.raises(StoreMismatchError, match="dtype"):
        extract_features(small_archive.metadata_url, small_archive.root, url,
                         client=cluster_client, weights="random", chunk_rows=16,
                         dtype="float32", progress=False)
    with pytest.raises(StoreMismatchError, match="preprocessing") as info:
        extract_features(small_archive.metadata_url, small_archive.root, url,
                         client=cluster_client, weights="random", chunk_rows=16,
                         preset="seed2018", progress=False)
    assert "'flip': 'train'" in str(info.value)
    with pytest.raises(StoreMismatchError, match="backbone"):
        extract_features(small_archive.metadata_url, small_archive.root, url,
                         client=cluster_client, weights="random", weights_seed=5,
                         chunk_rows=16, progress=False)


def test_bad_images_recorded_not_fatal(small_archive, cluster_client, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(small_archive.root, root)
    folder = root / "images_001" / "images"
    names = sorted(os.listdir(folder))
    (folder / names[0]).write_bytes(b"")
    (folder / names[1]).write_bytes(b"not a png at all")
    os.remove(folder / names[2])
    url = str(tmp_path / "f.zarr")
    metadata = str(root / "Data_Entry_2017.csv")
    summary = extract_features(metadata, str(root), url, client=cluster_client,
                               weights="random", chunk_rows=16, progress=False)
    reasons = dict(summary.failures)
    assert set(reasons) >= {names[0], names[1], names[2]} - set()  # age-dropped rows aside
    assert reasons.get(names[2], "file not found") == "file not found"
    store = FeatureStore.open(url)
    failed = store.failures()
    assert set(failed["image_index"]) == set(reasons)
    status = store.array("status")[:]
    assert np.isnan(store.features.compute()[status == STATUS_FAILED]).all()
    assert store.provenance["failed_rows"] == len(reasons)
    with pytest.raises(ImageDecodeError):
        extract_features(metadata, str(root), str(tmp_path / "strict.zarr"),
                         client=cluster_client, weights="random", chunk_rows=16, strict=True,
                         progress=False)


def test_onnxruntime_engine_matches_torch_and_is_recorded(small_archive, clean_store, cluster_client,
                                                         tmp_path):
    url = str(tmp_path / "ort.zarr")
    summary = extract_features(small_archive.metadata_url, small_archive.root, url,
                               client=cluster_client, weights="random", chunk_rows=16,
                               engine="onnxruntime", progress=False)
    assert summary.rows_failed == 0
    store, reference = FeatureStore.open(url), FeatureStore.open(clean_store[0])
    assert store.provenance["engine"] == "onnxruntime"
    assert reference.provenance["engine"] == "torch"
    got = store.features.compute().astype(np.float32)
    expected = reference.features.compute().astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-2)  # both float16 on disk
    with pytest.raises(StoreMismatchError, match="engine"):
        extract_features(small_archive.metadata_url, small_archive.root, url, client=cluster_client,
                         weights="random", chunk_rows=16, engine="torch", progress=False)
    # engine="auto" (the default) resumes a store with the engine it was made with.
    resumed = extract_features(small_archive.metadata_url, small_archive.root, url,
                               client=cluster_client, weights="random", chunk_rows=16,
                               progress=False)
    assert resumed.chunks_run == 0 and resumed.engine == "onnxruntime"


def test_image_size_is_a_setting_recorded_and_checked(small_archive, cluster_client, clean_store,
                                                     tmp_path):
    """``image_size`` (``--image-size``) sets the backbone's input side: features equal a
    direct computation at that size, both engines accept it, and a store made at one size
    is never resumed at another."""
    from cxrdask.errors import OptionError
    from cxrdask.imaging.preprocessing import Preprocessing

    url = str(tmp_path / "small.zarr")
    extract_features(small_archive.metadata_url, small_archive.root, url, client=cluster_client,
                     weights="random", chunk_rows=16, image_size=64, backbone="resnet18",
                     precision="fp32", progress=False)
    store = FeatureStore.open(url)
    assert store.provenance["preprocessing"]["size"] == 64
    assert store.provenance["extract_config"]["image_size"] == 64
    names = store.table(["image_index"])["image_index"].tolist()
    urls = locate_images(small_archive.root).urls_for(names)
    expected = direct_features(urls, BackboneSpec("resnet18", "random", 0), Preprocessing(size=64))
    got = store.features.compute().astype(np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-2)
    # The 224 store's features differ: the size reached the backbone.
    assert not np.allclose(got, FeatureStore.open(clean_store[0]).features.compute()[:, :512])
    with pytest.raises(StoreMismatchError, match="preprocessing"):
        extract_features(small_archive.metadata_url, small_archive.root, url,
                         client=cluster_client, weights="random", chunk_rows=16, image_size=96,
                         backbone="resnet18", progress=False)
    ort = str(tmp_path / "ort.zarr")
    extract_features(small_archive.metadata_url, small_archive.root, ort, client=cluster_client,
                     weights="random", chunk_rows=16, image_size=64, backbone="resnet18",
                     engine="onnxruntime", progress=False)
    np.testing.assert_allclose(FeatureStore.open(ort).features.compute().astype(np.float32),
                               got, rtol=2e-3, atol=2e-2)
    with pytest.raises(OptionError, match="image_size must be between 32"):
        extract_features(small_archive.metadata_url, small_archive.root, str(tmp_path / "x.zarr"),
                         client=cluster_client, weights="random", image_size=16, progress=False)


def test_precision_engine_and_compile_auto_are_made_concrete_for_the_job_and_the_workers(
        small_archive, cluster_client, tmp_path):
    """The defaults, ``auto``: bf16 where the workers' CPU computes it natively, else fp32;
    ONNX Runtime for fp32 on these CPU workers (it is installed with cxrdask), PyTorch for
    bf16 and for a compiled backbone; no compile for a job this small. All recorded in the
    store as what was used (never "auto"); a resumed store keeps its own. A compiled
    backbone (Inductor freezing on the CPU) gives the eager backbone's features."""
    from cxrdask.backbones.hardware import cpu_has_native_bf16

    def extract(url: str, **options):
        return extract_features(small_archive.metadata_url, small_archive.root, url,
                                client=cluster_client, weights="random", chunk_rows=40,
                                image_size=64, backbone="resnet18", progress=False, **options)

    url = str(tmp_path / "auto.zarr")
    first = extract(url)
    used = FeatureStore.open(url).provenance["precision"]
    assert used == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert FeatureStore.open(url).provenance["compile"] is False and not first.compiled
    engine = "torch" if used == "bf16" else "onnxruntime"
    assert FeatureStore.open(url).provenance["engine"] == engine == first.engine
    assert first.precision == used and f"images/s, {used}, {engine})" in str(first)
    # A store made with the other arithmetic, compiled; then resumed with the defaults.
    other, eager = str(tmp_path / "other.zarr"), str(tmp_path / "eager.zarr")
    made = "fp32" if used == "bf16" else "bf16"
    compiled = extract(other, precision=made, compile=True)
    extract(eager, precision=made, compile=False, engine="torch")
    assert compiled.compiled and f"images/s, {made}, compiled, torch)" in str(compiled)
    reference = FeatureStore.open(eager).features.compute().astype(np.float32)
    got = FeatureStore.open(other).features.compute().astype(np.float32)
    assert np.abs(got - reference).max() <= 0.03 * np.abs(reference).max()
    store = FeatureStore.open(other, mode="r+")
    store.group["done"][1] = False
    summary = extract(other)
    assert summary.chunks_run == 1 and summary.compiled
    assert FeatureStore.open(other).provenance["precision"] == made


def test_compile_auto_compiles_where_it_was_measured_to_be_repaid():
    from cxrdask.config import COMPILE_AUTO_MIN_IMAGES
    from cxrdask.extract.resolve import compile_pays_off

    threads, enough = 2, COMPILE_AUTO_MIN_IMAGES * 2
    assert compile_pays_off(112_120, threads, {"cpu"}, "torch", "fp32")  # the whole archive
    assert compile_pays_off(enough, threads, {"cpu"}, "torch", "fp32")
    assert not compile_pays_off(enough - 1, threads, {"cpu"}, "torch", "fp32")
    assert not compile_pays_off(564, threads, {"cpu"}, "torch", "fp32")
    assert not compile_pays_off(112_120, threads, {"cpu"}, "torch", "bf16")  # no faster compiled
    assert not compile_pays_off(112_120, threads, {"cuda"}, "torch", "fp32")  # not measured
    assert not compile_pays_off(112_120, threads, {"cpu", "cuda"}, "torch", "fp32")
    assert not compile_pays_off(112_120, threads, {"cpu"}, "onnxruntime", "fp32")
