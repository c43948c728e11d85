"""The ``openvino`` engine: the cached ONNX export compiled by OpenVINO, CPU fp32 or bf16,
features equal to eager PyTorch's, no torch on a worker that finds the export cached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cxrdask.backbones.runner import BackboneRunner, BackboneSpec
from cxrdask.config import ExtractConfig
from cxrdask.errors import OptionError

pytest.importorskip("openvino", reason="the openvino extra is not installed")

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


@pytest.mark.slow
def test_an_extraction_on_openvino_records_it_and_matches_eager(small_archive, cluster_client,
                                                               tmp_path):
    from cxrdask.extract.run import extract_features
    from cxrdask.store.features import FeatureStore

    def extract(url: str, engine: str):
        return extract_features(small_archive.metadata_url, small_archive.root, url,
                                client=cluster_client, weights="random", chunk_rows=24,
                                image_size=64, backbone="resnet18", precision="fp32",
                                engine=engine, dtype="float32", progress=False)

    summary = extract(str(tmp_path / "ov.zarr"), "openvino")
    assert summary.engine == "openvino" and summary.rows_failed == 0
    store = FeatureStore.open(str(tmp_path / "ov.zarr"))
    assert store.provenance["engine"] == "openvino"
    extract(str(tmp_path / "eager.zarr"), "torch")
    got = store.features.compute()
    expected = FeatureStore.open(str(tmp_path / "eager.zarr")).features.compute()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
