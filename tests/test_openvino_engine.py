"""The ``openvino`` engine: the cached ONNX export compiled by OpenVINO, CPU fp32 or bf16,
features equal to eager PyTorch's, no torch on a worker that finds the export cached; what
``engine="auto"`` runs for bf16 CPU jobs big enough to repay starting it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from cxrdask.backbones.engines.eager import EagerBackend
from cxrdask.backbones.runner import BackboneRunner, BackboneSpec
from cxrdask.config import OPENVINO_AUTO_MIN_IMAGES, ExtractConfig
from cxrdask.errors import OptionError, StoreMismatchError
from cxrdask.extract.layout import local_layout
from cxrdask.extract.resolve import WorkerFacts, resolve

SPEC = BackboneSpec("resnet18", "random", 5)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def test_openvino_gives_eager_pytorchs_features_in_any_batch(tmp_path, monkeypatch):
    """fp32 to float32 rounding; a chunk's short last batch padded to the compiled shape
    gives each image the features it has in a full batch."""
    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path))
    batch = _batch(8)
    eager = BackboneRunner.build(SPEC, "cpu", "fp32", engine="torch")(batch)
    runner = BackboneRunner.build(SPEC, "cpu", "fp32", batch_size=8, engine="openvino")
    assert runner.warm((3, 64, 64)) and not runner.warm((3, 64, 64))  # compiled once a shape
    full = runner(batch)
    np.testing.assert_allclose(full, eager, rtol=1e-4, atol=1e-4 * np.abs(eager).max())
    short = runner(batch[[6, 1, 3]])
    np.testing.assert_allclose(short, full[[6, 1, 3]], rtol=1e-5, atol=1e-6)
    assert any((tmp_path / "openvino").iterdir())  # OpenVINO's compiled-model cache


@pytest.mark.parametrize("bad", [{"compile": True}, {"device": "cuda"}, {"precision": "fp16"}])
def test_settings_openvino_cannot_run_are_refused_up_front(bad):
    with pytest.raises(OptionError, match="engine 'openvino' runs fp32 or bf16 on the CPU"):
        ExtractConfig(engine="openvino", **bad)
    ExtractConfig(engine="openvino", precision="bf16")  # native where the CPU has bf16


WORKER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from cxrdask.backbones.runner import BackboneRunner, BackboneSpec
    runner = BackboneRunner.build(BackboneSpec("resnet18", "random", 5), "cpu", "fp32",
                                  batch_size=2, engine="openvino")
    out = runner(np.zeros((2, 3, 64, 64), np.float32))
    print(json.dumps({"torch": "torch" in sys.modules, "shape": list(out.shape)}))
""")


def test_a_worker_with_the_export_cached_runs_openvino_without_torch(tmp_path):
    env = {**os.environ, "CXRDASK_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", WORKER_SCRIPT], capture_output=True,
                           text=True, timeout=300, env=env) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr
    first, second = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
    assert first["torch"] and not second["torch"]  # the first exports; the second reads
    assert second["shape"] == [2, SPEC.feature_dim]


COMPILER_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from cxrdask.backbones.runner import BackboneRunner, BackboneSpec
    runner = BackboneRunner.build(BackboneSpec("resnet18", "random", 5), "cpu", "fp32",
                                  batch_size=2, engine="openvino")
    go = sys.argv[1]
    open(f"{go}.ready-{os.getpid()}", "w").close()
    while not os.path.exists(go):  # both processes compile at the same moment
        time.sleep(0.005)
    compiled = runner.backend.compiled_for((3, 64, 64))
    print(json.dumps({"from_cache": bool(compiled.get_property("LOADED_FROM_CACHE"))}))
""")


@pytest.mark.slow
def test_worker_processes_compiling_together_compile_once_and_share_the_cached_model(tmp_path):
    """Two processes compile the same model at once into an empty OpenVINO cache: without
    a lock they both compile and race writing its blob; with it one compiles and the other
    loads the blob it wrote."""
    env = {**os.environ, "CXRDASK_CACHE_DIR": str(tmp_path / "cache")}
    export = subprocess.run([sys.executable, "-c", WORKER_SCRIPT], capture_output=True,
                            text=True, timeout=300, env=env)  # the ONNX export, cached first
    assert export.returncode == 0, export.stderr
    for blob in (tmp_path / "cache" / "openvino").glob("*.blob"):
        blob.unlink()  # an empty compiled-model cache; the export stays
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", COMPILER_SCRIPT, str(go)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env) for _ in range(2)]
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("go.ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    answers = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), answers
    loaded = sorted(json.loads(out.strip().splitlines()[-1])["from_cache"] for out, _ in answers)
    assert loaded == [False, True]  # one compiled, the other read what it wrote
    assert len(list((tmp_path / "cache" / "openvino").glob("*.blob"))) == 1


def test_bf16_features_are_eager_bf16s_within_its_rounding_and_the_same_in_any_thread(
        tmp_path, monkeypatch):
    """OpenVINO's bf16 kernels round differently from PyTorch's (as two bf16 engines do);
    threads sharing the compiled model from a cold start, each with its own request, agree
    bit for bit, and a short batch gives each image its full batch's features."""
    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path))
    batch = _batch(8, seed=1)
    eager = BackboneRunner.build(SPEC, "cpu", "bf16", engine="torch")(batch)
    runner = BackboneRunner.build(SPEC, "cpu", "bf16", batch_size=8, engine="openvino")
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
    assert np.abs(first - eager).max() <= 0.05 * np.abs(eager).max()
    centred = [v - v.mean() for v in (first.ravel(), eager.ravel())]
    assert np.dot(*centred) / np.linalg.norm(centred[0]) / np.linalg.norm(centred[1]) > 0.99
    short = runner(batch[[5, 2, 0]])
    np.testing.assert_allclose(short, first[[5, 2, 0]], rtol=1e-5, atol=1e-6)


def test_engine_auto_runs_openvino_for_bf16_cpu_jobs_that_repay_starting_it():
    threads, enough = 2, OPENVINO_AUTO_MIN_IMAGES * 2
    cpu = WorkerFacts("cpu", "bf16", onnxruntime=True, openvino=True, compiler=True)

    def engine(images, workers=(cpu,), **options):
        return resolve(ExtractConfig(**options), list(workers), images, threads).engine

    assert engine(564) == "openvino"
    assert engine(enough) == "openvino"
    assert engine(enough - 1) == "torch"  # too few images per thread to repay its start
    assert engine(None) == "torch"  # the job's size not known yet
    assert engine(112_120, precision="fp32") == "onnxruntime"
    assert engine(112_120, compile=True) == "torch"
    assert engine(112_120, [replace(cpu, device="cuda")]) == "torch"
    assert engine(112_120, [cpu, replace(cpu, device="cuda")]) == "torch"
    assert engine(112_120, [replace(cpu, openvino=False)]) == "torch"
    # A local cluster for it is one process with a thread per core, as for eager bf16.
    cores = os.cpu_count() or 1
    assert local_layout(ExtractConfig(engine="openvino", precision="bf16")) == (1, cores)
    assert local_layout(ExtractConfig(engine="openvino", device="cpu")) == (1, cores)


@pytest.mark.slow
def test_a_job_big_enough_runs_openvino_by_default_and_the_store_says_so(
        small_archive, cluster_client, tmp_path, monkeypatch):
    """``engine="auto"``, bf16 on CPU workers, a job past the threshold (lowered here to
    this 80-image archive): the workers run OpenVINO, the store records it, and its features
    are eager bf16's within bf16's rounding. An explicit engine is kept; a resumed store
    keeps the engine it was made with, and one made by the retired TorchScript engine is
    refused by name."""
    import cxrdask.extract.resolve
    from cxrdask.extract.run import extract_features
    from cxrdask.store.features import FeatureStore

    def extract(url: str, **options):
        return extract_features(small_archive.metadata_url, small_archive.root, url,
                                client=cluster_client, weights="random", chunk_rows=24,
                                image_size=64, backbone="resnet18", precision="bf16",
                                progress=False, **options)

    eager = extract(str(tmp_path / "eager.zarr"))  # 40 images per worker thread: eager
    assert eager.engine == "torch"
    monkeypatch.setattr(cxrdask.extract.resolve, "OPENVINO_AUTO_MIN_IMAGES", 16)
    url = str(tmp_path / "ov.zarr")
    summary = extract(url)
    assert summary.engine == "openvino" and summary.rows_failed == 0
    assert "openvino)" in str(summary)
    store = FeatureStore.open(url)
    assert store.provenance["engine"] == "openvino"
    got = store.features.compute().astype(np.float32)
    expected = FeatureStore.open(str(tmp_path / "eager.zarr")).features.compute().astype(np.float32)
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
    assert extract(str(tmp_path / "asked.zarr"), engine="torch").engine == "torch"
    store = FeatureStore.open(url, mode="r+")
    store.group["done"][1] = False
    monkeypatch.setattr(cxrdask.extract.resolve, "OPENVINO_AUTO_MIN_IMAGES", 10**6)
    resumed = extract(url)
    assert resumed.chunks_run == 1 and resumed.engine == "openvino"
    store = FeatureStore.open(url, mode="r+")
    store.update_provenance(engine="torchscript")  # as the release before OpenVINO wrote it
    store.group["done"][1] = False
    with pytest.raises(StoreMismatchError, match="torchscript engine was retired"):
        extract(url)


def test_a_worker_warms_its_backbone_once_not_again_on_each_call_of_the_session(
        tmp_path, monkeypatch):
    """The warm-up compiles OpenVINO's model for the image shape before the first chunk, with
    no batch run. A backbone warmed by a batch of zeros (compiled, or on a GPU; an eager
    runner stands in for a compiled one here) runs it once: the next call in the session (a
    notebook's second extraction, the models kept) finds it warm."""
    import cxrdask.extract.worker as worker
    from cxrdask.extract.task_config import TaskConfig
    from cxrdask.imaging.preprocessing import Preprocessing
    from cxrdask.testing import make_feature_store

    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path / "cache"))
    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 16, feature_dim=SPEC.feature_dim)
    config = TaskConfig(store_url=url, storage_options=None, backbone=SPEC,
                        preprocessing=Preprocessing(size=64), device="cpu", precision="bf16",
                        engine="openvino")
    compiled_model = worker._runner(config)
    batches: list[int] = []
    run = EagerBackend.run
    monkeypatch.setattr(EagerBackend, "run",
                        lambda self, batch: batches.append(len(batch)) or run(self, batch))
    worker.warm_worker(config)
    assert (3, 64, 64) in compiled_model.backend._compiled and batches == []
    eager = BackboneRunner.build(SPEC, "cpu", "bf16", batch_size=4)
    eager.backend.pads = True  # what a compiled backend says (its compile not paid here)
    monkeypatch.setattr(worker, "_runner", lambda _: eager)
    compiled = replace(config, engine="torch", compile=True, batch_size=4)
    worker.warm_worker(compiled)
    assert batches == [4]
    worker.warm_worker(compiled)
    assert batches == [4]
