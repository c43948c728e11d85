"""The ``torchscript`` engine: a frozen, fused trace of the backbone on the CPU
(:mod:`cxrdask.backbones.engines.torchscript`), what ``engine="auto"`` runs for bf16 jobs big enough."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from cxrdask.backbones.engines.eager import EagerBackend
from cxrdask.backbones.engines.torchscript import TorchScriptBackbone
from cxrdask.backbones.hardware import torchscript_available
from cxrdask.backbones.runner import BackboneRunner, BackboneSpec
from cxrdask.config import TORCHSCRIPT_AUTO_MIN_IMAGES, ExtractConfig
from cxrdask.errors import OptionError
from cxrdask.extract.resolve import torchscript_pays_off
from cxrdask.extract.run import extract_features, local_layout
from cxrdask.store.features import FeatureStore

SPEC = BackboneSpec("resnet18", "random", 0)


def _batch(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-4), ("bf16", 0.03)])
def test_the_trace_gives_eager_pytorchs_features(precision, tolerance):
    """Folding the batch norms into the convolutions changes only the rounding: fp32 to
    float32 precision, bf16 within bf16's (as a compiled backbone's, test_extract)."""
    batch = _batch(8)
    eager = BackboneRunner.build(SPEC, "cpu", precision, engine="torch")(batch)
    runner = BackboneRunner.build(SPEC, "cpu", precision, engine="torchscript")
    traced = runner(batch)
    assert isinstance(runner.backend.graphs, TorchScriptBackbone)
    assert traced.shape == eager.shape == (8, SPEC.feature_dim)
    assert np.abs(traced - eager).max() <= tolerance * np.abs(eager).max()


def test_an_image_gets_the_same_features_in_any_batch_any_position_and_any_thread():
    """The fuser's profiling pass runs on zeros before any image, and short batches are
    padded: so an image's features do not depend on where it falls, and threads sharing
    the trace from a cold start agree bit for bit."""
    runner = BackboneRunner.build(SPEC, "cpu", "bf16", batch_size=8, engine="torchscript")
    batch = _batch(8, seed=1)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = runner(batch)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = results[0]
    assert all(np.array_equal(first, got) for got in results.values())
    assert np.array_equal(runner(batch), first)  # after the cold start, too
    short = runner(batch[[5, 2, 0]])  # a chunk's short last batch, in another order
    assert short.shape == (3, SPEC.feature_dim)
    assert np.array_equal(short, first[[5, 2, 0]])


@pytest.mark.parametrize("bad", [{"precision": "fp16"}, {"compile": True}, {"device": "cuda"}])
def test_torchscript_settings_it_cannot_run_are_refused_up_front(bad):
    with pytest.raises(OptionError, match="engine 'torchscript' runs fp32 or bf16 on the CPU"):
        ExtractConfig(engine="torchscript", **bad)
    with pytest.raises(OptionError, match="engine 'torchscript' runs fp32 or bf16 on the CPU, "
                                          "uncompiled"):
        BackboneRunner.build(SPEC, "cpu", "bf16", compile=True, engine="torchscript")


def test_engine_auto_runs_torchscript_for_bf16_cpu_jobs_that_repay_the_trace():
    threads, enough = 2, TORCHSCRIPT_AUTO_MIN_IMAGES * 2
    assert torchscript_pays_off(564, threads, {"cpu"}, "bf16", compile=False)
    assert torchscript_pays_off(enough, threads, {"cpu"}, "bf16", compile=False)
    assert not torchscript_pays_off(enough - 1, threads, {"cpu"}, "bf16", compile=False)
    assert not torchscript_pays_off(112_120, threads, {"cpu"}, "fp32", compile=False)  # ONNX's
    assert not torchscript_pays_off(112_120, threads, {"cpu"}, "bf16", compile=True)
    assert not torchscript_pays_off(112_120, threads, {"cuda"}, "bf16", compile=False)
    assert not torchscript_pays_off(112_120, threads, {"cpu", "cuda"}, "bf16", compile=False)
    # A local cluster for it is one process with a thread per core, as for eager bf16.
    cores = os.cpu_count() or 1
    assert local_layout(ExtractConfig(engine="torchscript", precision="fp32")) == (1, cores)
    assert local_layout(ExtractConfig(engine="torchscript", device="cpu")) == (1, cores)


def test_whether_torch_has_torchscript_is_told_without_importing_torch():
    """A worker answers this while it still imports torch (the answer must not wait for it)."""
    assert torchscript_available()
    code = ("import sys; from cxrdask.backbones.hardware import torchscript_available; "
            "print(torchscript_available(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_a_job_big_enough_runs_torchscript_by_default_and_the_store_says_so(
        small_archive, cluster_client, tmp_path, monkeypatch):
    """``engine="auto"``, bf16 on CPU workers, a job past the threshold (lowered here to
    this 80-image archive): the workers run the trace, the store records ``torchscript``,
    and its features are eager bf16's within bf16's rounding. An explicit engine is kept,
    and a resumed store keeps the engine it was made with."""
    import cxrdask.extract.resolve

    def extract(url: str, **options):
        return extract_features(small_archive.metadata_url, small_archive.root, url,
                                client=cluster_client, weights="random", chunk_rows=24,
                                image_size=64, backbone="resnet18", precision="bf16",
                                progress=False, **options)

    eager = extract(str(tmp_path / "eager.zarr"))  # 40 images per worker thread: eager
    assert eager.engine == "torch"
    monkeypatch.setattr(cxrdask.extract.resolve, "TORCHSCRIPT_AUTO_MIN_IMAGES", 16)
    url = str(tmp_path / "traced.zarr")
    traced = extract(url)
    assert traced.engine == "torchscript" and traced.rows_failed == 0
    assert "torchscript)" in str(traced)
    store = FeatureStore.open(url)
    assert store.provenance["engine"] == "torchscript"
    got = store.features.compute().astype(np.float32)
    expected = FeatureStore.open(str(tmp_path / "eager.zarr")).features.compute().astype(np.float32)
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() <= 0.03 * np.abs(expected).max()
    assert extract(str(tmp_path / "asked.zarr"), engine="torch").engine == "torch"
    store = FeatureStore.open(url, mode="r+")
    store.group["done"][1] = False
    monkeypatch.setattr(cxrdask.extract.resolve, "TORCHSCRIPT_AUTO_MIN_IMAGES", 10**6)
    resumed = extract(url)
    assert resumed.chunks_run == 1 and resumed.engine == "torchscript"


def test_a_worker_warms_its_backbone_once_not_again_on_each_call_of_the_session(tmp_path,
                                                                                monkeypatch):
    """The warm-up builds the trace (its profiling pass is its only batch) before the first
    chunk. A backbone warmed by a batch of zeros (compiled, or on a GPU; an eager runner
    stands in for a compiled one here) runs it once: the next call in the session (a
    notebook's second extraction, the models kept) finds it warm."""
    from dataclasses import replace

    import cxrdask.extract.worker as worker
    from cxrdask.extract.task_config import TaskConfig
    from cxrdask.imaging.preprocessing import Preprocessing
    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 16, feature_dim=SPEC.feature_dim)
    config = TaskConfig(store_url=url, storage_options=None, backbone=SPEC,
                        preprocessing=Preprocessing(size=64), device="cpu", precision="bf16",
                        engine="torchscript")
    traced = worker._runner(config)
    batches: list[int] = []
    run = EagerBackend.run
    monkeypatch.setattr(EagerBackend, "run",
                        lambda self, batch: batches.append(len(batch)) or run(self, batch))
    worker.warm_worker(config)
    assert (3, 64, 64) in traced.backend.graphs._graphs and batches == []
    eager = BackboneRunner.build(SPEC, "cpu", "bf16", batch_size=4)
    eager.backend.pads = True  # what a compiled backend says (its compile not paid here)
    monkeypatch.setattr(worker, "_runner", lambda _: eager)
    compiled = replace(config, engine="torch", compile=True, batch_size=4)
    worker.warm_worker(compiled)
    assert batches == [4]
    worker.warm_worker(compiled)
    assert batches == [4]
    worker.warm_worker(compiled)
    assert batches == [4]
