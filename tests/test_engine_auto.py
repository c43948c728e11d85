"""engine="auto": ONNX Runtime where the backbone runs fp32 on the CPU, PyTorch elsewhere; the
local cluster's layout that suits it; and ONNX exports cached on disk between workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cxrdask.backbone import LOAD_COUNTS, BackboneRunner, BackboneSpec
from cxrdask.config import ExtractConfig
from cxrdask.errors import OptionError
from cxrdask.extract import local_layout
from cxrdask.hardware import auto_engine, local_engine, onnxruntime_installed
from cxrdask.onnx_engine import onnx_cache_path


def test_auto_engine_is_onnxruntime_only_for_an_uncompiled_fp32_cpu_backbone():
    assert auto_engine("cpu", "fp32", "auto", True) == "onnxruntime"
    assert auto_engine("cpu", "fp32", False, True) == "onnxruntime"
    assert auto_engine("cpu", "fp32", True, True) == "torch"  # compile asked for: PyTorch's
    assert auto_engine("cpu", "bf16", "auto", True) == "torch"  # ONNX Runtime runs fp32 only
    assert auto_engine("cuda", "fp32", "auto", True) == "torch"
    assert auto_engine("cpu", "fp32", "auto", False) == "torch"  # not installed there


def test_the_local_layout_follows_the_engine_the_workers_will_run():
    cores = os.cpu_count() or 1
    assert local_engine("torch", "cpu", "fp32", "auto") == "torch"
    assert local_engine("onnxruntime", "auto", "auto", "auto") == "onnxruntime"
    assert local_engine("auto", "cuda", "auto", "auto") == "torch"
    assert local_engine("auto", "cpu", "bf16", "auto") == "torch"
    assert local_engine("auto", "cpu", "fp32", True) == "torch"
    ort = "onnxruntime" if onnxruntime_installed() else "torch"
    assert local_engine("auto", "cpu", "fp32", "auto") == ort
    assert local_layout(ExtractConfig(device="cpu", precision="fp32")) == (
        (1, cores) if ort == "onnxruntime" else None)
    assert local_layout(ExtractConfig(engine="torch")) is None
    assert local_layout(ExtractConfig(device="cpu", precision="bf16")) is None


@pytest.mark.parametrize("bad", [{"precision": "bf16"}, {"precision": "fp16"}, {"compile": True},
                                 {"device": "cuda"}])
def test_onnxruntime_settings_it_cannot_run_are_refused_up_front(bad):
    with pytest.raises(OptionError, match="engine 'onnxruntime' runs fp32 on the CPU"):
        ExtractConfig(engine="onnxruntime", **bad)


def test_the_onnx_export_is_cached_on_disk_and_a_broken_file_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRDASK_CACHE_DIR", str(tmp_path / "cache"))
    spec = BackboneSpec("resnet18", "random", 7)
    path = onnx_cache_path(spec)
    assert path is not None and str(path).startswith(str(tmp_path / "cache" / "onnx"))
    assert onnx_cache_path(BackboneSpec("resnet18", "random", 8)) != path  # the seed is keyed
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)

    def built_and_run() -> tuple[int, np.ndarray]:
        before = LOAD_COUNTS[spec]
        features = BackboneRunner(spec, "cpu", "fp32", engine="onnxruntime")(batch)
        return LOAD_COUNTS[spec] - before, features

    builds, exported = built_and_run()
    assert builds == 1 and path.is_file()  # exported, and kept
    builds, cached = built_and_run()
    assert builds == 0  # read back: no network built, no export
    np.testing.assert_array_equal(cached, exported)
    reference = BackboneRunner(spec, "cpu", "fp32", engine="torch")(batch)
    np.testing.assert_allclose(cached, reference, rtol=1e-3, atol=1e-3)
    path.write_bytes(b"not an onnx model")  # a foreign or damaged file
    builds, again = built_and_run()
    assert builds == 1 and path.stat().st_size > 1000
    np.testing.assert_array_equal(again, exported)
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind


def test_weights_from_a_file_are_never_served_from_the_cache(tmp_path):
    assert onnx_cache_path(BackboneSpec("resnet18", str(tmp_path / "w.pth"), 0)) is None


DEFAULT_LAYOUT_SCRIPT = textwrap.dedent("""
    import json, sys
    from cxrdask import close_session_cluster, extract_features
    from cxrdask.cluster import _SESSION
    from cxrdask.store import FeatureStore

    metadata, root, out = sys.argv[1:4]
    summary = extract_features(metadata, root, out, weights="random", backbone="resnet18",
                               chunk_rows=16, image_size=64, progress=False)
    layout = list(_SESSION["local"][0])
    print(json.dumps({"layout": layout, "engine": summary.engine,
                      "recorded": FeatureStore.open(out).provenance["engine"],
                      "rows": summary.rows_written}))
    close_session_cluster()
""")


@pytest.mark.slow
def test_a_call_with_no_layout_starts_the_cluster_its_engine_runs_best_on(small_archive, tmp_path):
    """With no client and no layout asked for, the session's local cluster is one process
    with a thread per core where the workers will run ONNX Runtime, else one
    single-threaded process per core; the store records the engine that ran."""
    run = subprocess.run([sys.executable, "-c", DEFAULT_LAYOUT_SCRIPT, small_archive.metadata_url,
                          small_archive.root, str(tmp_path / "f.zarr")], capture_output=True,
                         text=True, timeout=600,
                         env={**os.environ, "TQDM_DISABLE": "1",
                              "CXRDASK_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    cores = os.cpu_count() or 1
    engine = local_engine("auto", "auto", "auto", "auto")
    assert seen == {"layout": [1, cores] if engine == "onnxruntime" else [cores, 1],
                    "engine": engine, "recorded": engine, "rows": 80}
