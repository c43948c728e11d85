"""engine="auto": ONNX Runtime where the backbone runs fp32 on the CPU, PyTorch elsewhere; the
local cluster's layout that suits it; and ONNX exports cached on disk between workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from cxrdask.backbones import build
from cxrdask.backbones.engines.onnxruntime import onnx_cache_path, optimized_cache_path
from cxrdask.backbones.hardware import cpu_auto_precision, has_no_gpu, onnxruntime_installed
from cxrdask.backbones.runner import BackboneRunner, BackboneSpec
from cxrdask.config import COMPILE_AUTO_MIN_IMAGES, ExtractConfig
from cxrdask.errors import OptionError
from cxrdask.extract.layout import local_layout
from cxrdask.extract.resolve import Resolved, WorkerFacts, local_engine, resolve

CPU = WorkerFacts("cpu", "fp32", onnxruntime=True, openvino=True, compiler=True)


def _engine(workers=(CPU,), images: int | None = 100, **options) -> str:
    return resolve(ExtractConfig(**options), list(workers), images, 2).engine


def test_auto_engine_is_onnxruntime_only_for_an_uncompiled_fp32_cpu_backbone():
    assert _engine() == "onnxruntime"
    assert _engine(compile=False) == "onnxruntime"
    assert _engine(compile=True) == "torch"  # compile asked for: PyTorch's
    assert _engine(precision="bf16", images=None) == "torch"  # ONNX Runtime runs fp32 only
    assert _engine([replace(CPU, device="cuda")]) == "torch"
    assert _engine([CPU, replace(CPU, device="cuda")]) == "torch"  # every worker, or none
    assert _engine([replace(CPU, onnxruntime=False)]) == "torch"  # not installed there
    assert _engine([]) == "torch"  # no worker has joined: PyTorch fp32, uncompiled
    assert resolve(ExtractConfig(), [], 100, 2) == Resolved("fp32", "torch", False, (
        "precision fp32: not every worker computes bf16 natively",
        "engine torch: everywhere else (GPUs, fp16, compile)"))


def test_the_resolver_is_pure_and_says_why_for_each_auto_choice():
    """One table decides: precision bf16 only where every worker computes it natively;
    given values are kept; compile only for fp32 PyTorch on CPUs with a compiler, big jobs."""
    bf16 = replace(CPU, precision="bf16")
    big = COMPILE_AUTO_MIN_IMAGES * 2
    assert resolve(ExtractConfig(), [bf16, bf16], 100, 2).precision == "bf16"
    assert resolve(ExtractConfig(), [bf16, CPU], 100, 2).precision == "fp32"
    assert resolve(ExtractConfig(precision="bf16"), [CPU], 100, 2).precision == "bf16"
    given = resolve(ExtractConfig(engine="torch", compile=False, precision="fp32"), [CPU], 9, 1)
    assert given == Resolved("fp32", "torch", False, ())
    no_onnx = replace(CPU, onnxruntime=False)
    compiled = resolve(ExtractConfig(), [no_onnx], big, 2)
    assert compiled.engine == "torch" and compiled.compile and "compiled" in compiled.why[-1]
    assert not resolve(ExtractConfig(), [no_onnx], big - 1, 2).compile
    assert not resolve(ExtractConfig(), [replace(no_onnx, compiler=False)], big, 2).compile
    assert resolve(ExtractConfig(), [bf16], big, 2).engine == "openvino"
    assert resolve(ExtractConfig(), [replace(bf16, openvino=False)], big, 2).engine == "torch"
    assert not resolve(ExtractConfig(), [bf16], big, 2).compile  # bf16: never compiled


def test_the_local_layout_follows_the_engine_the_workers_will_run():
    cores = os.cpu_count() or 1
    assert local_engine(ExtractConfig(engine="torch", device="cpu", precision="fp32")) == "torch"
    assert local_engine(ExtractConfig(engine="onnxruntime")) == "onnxruntime"
    assert local_engine(ExtractConfig(device="cuda")) == "torch"
    assert local_engine(ExtractConfig(device="cpu", precision="bf16")) == "torch"
    assert local_engine(ExtractConfig(device="cpu", precision="fp32", compile=True)) == "torch"
    ort = "onnxruntime" if onnxruntime_installed() else "torch"
    assert local_engine(ExtractConfig(device="cpu", precision="fp32")) == ort
    assert local_layout(ExtractConfig(device="cpu", precision="fp32")) == (
        (1, cores) if ort == "onnxruntime" else None)
    # Eager bf16 PyTorch: one process too (compile="auto" never compiles bf16)...
    assert local_layout(ExtractConfig(device="cpu", precision="bf16")) == (1, cores)
    assert local_layout(ExtractConfig(device="cpu", precision="bf16", compile=False)) == (1, cores)
    # ... but not compiled (a graph per thread), not eager fp32, not where a GPU may run it.
    assert local_layout(ExtractConfig(device="cpu", precision="bf16", compile=True)) is None
    assert local_layout(ExtractConfig(engine="torch", device="cpu", precision="fp32")) is None
    assert local_layout(ExtractConfig(engine="torch", device="cpu", precision="fp32",
                                      compile=False)) is None
    assert local_layout(ExtractConfig(device="cuda", precision="bf16")) is None
    assert local_layout(ExtractConfig(engine="torch", precision="bf16")) == (
        (1, cores) if has_no_gpu() else None)


@pytest.mark.parametrize("bad", [{"precision": "bf16"}, {"precision": "fp16"}, {"compile": True},
                                 {"device": "cuda"}])
def test_onnxruntime_settings_it_cannot_run_are_refused_up_front(bad):
    with pytest.raises(OptionError, match="engine 'onnxruntime' runs fp32 on the CPU"):
        ExtractConfig(engine="onnxruntime", **bad)


def test_the_onnx_export_is_cached_on_disk_and_a_broken_file_is_replaced(tmp_path, monkeypatch):
    """The export, and ONNX Runtime's graph optimized for this CPU, are cached; a later
    session loads the optimized graph (no network built, same features); a damaged
    optimized file is made again from the export, a damaged export by exporting again."""
    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path / "cache"))
    spec = BackboneSpec("resnet18", "random", 7)
    path = onnx_cache_path(spec)
    assert path is not None and str(path).startswith(str(tmp_path / "cache" / "onnx"))
    assert onnx_cache_path(BackboneSpec("resnet18", "random", 8)) != path  # the seed is keyed
    optimized = optimized_cache_path(path)
    assert optimized.parent == path.parent and optimized != path
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)

    built: list[BackboneSpec] = []
    real_build = build.build_backbone
    monkeypatch.setattr(build, "build_backbone", lambda s: built.append(s) or real_build(s))

    def built_and_run() -> tuple[int, np.ndarray]:
        before = len(built)
        features = BackboneRunner.build(spec, "cpu", "fp32", engine="onnxruntime")(batch)
        return len(built) - before, features

    builds, exported = built_and_run()
    assert builds == 1 and path.is_file() and optimized.is_file()  # exported and optimized, kept
    builds, cached = built_and_run()
    assert builds == 0  # the optimized graph read back: no network built, no export
    np.testing.assert_allclose(cached, exported, rtol=1e-5, atol=1e-5)
    reference = BackboneRunner.build(spec, "cpu", "fp32", engine="torch")(batch)
    np.testing.assert_allclose(cached, reference, rtol=1e-3, atol=1e-3)
    optimized.write_bytes(b"not an onnx model")  # a damaged optimized graph: made again
    builds, again = built_and_run()
    assert builds == 0 and optimized.stat().st_size > 1000
    np.testing.assert_allclose(again, exported, rtol=1e-5, atol=1e-5)
    path.write_bytes(b"not an onnx model")  # a foreign or damaged export, no optimized graph
    optimized.unlink()
    builds, again = built_and_run()
    assert builds == 1 and path.stat().st_size > 1000 and optimized.is_file()
    np.testing.assert_allclose(again, exported, rtol=1e-5, atol=1e-5)
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind


def test_numpy_input_for_onnxruntime_is_the_torch_input(tmp_path):
    """A worker running ONNX Runtime normalises with NumPy (no torch): the same numbers as
    the torch input, flips included."""
    import torch

    from cxrdask.imaging.host_input import HostInput, needs_torch_input
    from cxrdask.imaging.model_input import DeviceInput
    from cxrdask.imaging.preprocessing import DEVICE_INTERPOLATION, Preprocessing

    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    flips = [False, True, True, False]
    host = HostInput(Preprocessing(size=32))
    numpy_input = host.normalise(host.to_device(pixels), flips)
    torch_input = DeviceInput(torch.device("cpu"), Preprocessing(size=32)).normalise(
        torch.from_numpy(pixels), flips)
    assert numpy_input.shape == (4, 3, 32, 32) and numpy_input.flags.c_contiguous
    np.testing.assert_allclose(numpy_input, torch_input.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(numpy_input[1], host.normalise(pixels[1:2])[0][:, :, ::-1])
    assert not needs_torch_input(Preprocessing(), False, True)  # ONNX Runtime, OpenVINO
    assert not needs_torch_input(Preprocessing(), True, False)  # a cache pass
    assert needs_torch_input(Preprocessing(), True, True)
    assert needs_torch_input(Preprocessing(interpolation=DEVICE_INTERPOLATION), False, True)
    with pytest.raises(ValueError, match="resizes with torch"):
        HostInput(Preprocessing(interpolation=DEVICE_INTERPOLATION))


def test_weights_from_a_file_are_never_served_from_the_cache(tmp_path):
    assert onnx_cache_path(BackboneSpec("resnet18", str(tmp_path / "w.pth"), 0)) is None


DEFAULT_LAYOUT_SCRIPT = textwrap.dedent("""
    import json, sys
    from cxrdask import close_session_cluster, extract_features
    from cxrdask.runtime.cluster import _SESSION
    from cxrdask.store.features import FeatureStore

    metadata, root, out = sys.argv[1:4]
    summary = extract_features(metadata, root, out, weights="random", backbone="resnet18",
                               chunk_rows=16, image_size=64, progress=False)
    layout = list(_SESSION["local"][0])
    close_session_cluster()
    # A new cluster, the export cached by the first: do its workers import torch?
    again = extract_features(metadata, root, out + "-again", weights="random", backbone="resnet18",
                             chunk_rows=16, image_size=64, progress=False)
    torch_imported = _SESSION["local"][2].run(lambda: "torch" in sys.modules)
    print(json.dumps({"layout": layout, "engine": summary.engine,
                      "recorded": FeatureStore.open(out).provenance["engine"],
                      "rows": summary.rows_written, "rows again": again.rows_written,
                      "torch on the workers": sorted(set(torch_imported.values()))}))
    close_session_cluster()
""")


@pytest.mark.slow
def test_a_call_with_no_layout_starts_the_cluster_its_engine_runs_best_on(small_archive, tmp_path):
    """With no client and no layout asked for, the session's local cluster is one process
    with a thread per core where the workers will run ONNX Runtime or eager bf16, else one
    single-threaded process per core; the store records the engine that ran. Workers that
    run ONNX Runtime from a cached export never import torch (2-3 s of a cold start)."""
    run = subprocess.run([sys.executable, "-c", DEFAULT_LAYOUT_SCRIPT, small_archive.metadata_url,
                          small_archive.root, str(tmp_path / "f.zarr")], capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "TQDM_DISABLE": "1",
                              "CXRDASK_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    cores = os.cpu_count() or 1
    engine = local_engine(ExtractConfig())
    one_process = engine == "onnxruntime" or (has_no_gpu() and cpu_auto_precision() == "bf16")
    assert seen == {"layout": [1, cores] if one_process else [cores, 1],
                    "engine": engine, "recorded": engine, "rows": 80, "rows again": 80,
                    "torch on the workers": [engine == "torch"]}


def test_a_starting_worker_imports_torch_only_where_it_will_need_it(tmp_path, monkeypatch):
    """The worker's background import: torch where the default engine is PyTorch, or where
    no ONNX export is cached yet (the first job exports); not for ONNX Runtime from a cache."""
    from cxrdask.extract.worker_setup import TORCH_MODULES, WORKER_MODULES, preimported_modules

    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path))
    assert preimported_modules() == WORKER_MODULES + TORCH_MODULES  # nothing cached: it exports
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "resnet50-0123456789abcdef.onnx").write_bytes(b"an export")
    default_is_torch = local_engine(ExtractConfig()) == "torch"
    assert preimported_modules() == WORKER_MODULES + (TORCH_MODULES if default_is_torch else ())
