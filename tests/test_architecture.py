"""The house's rules, checked: what each room imports, the error hierarchy, the typed config,
and a store that speaks xarray."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cxrdask.errors as errors_module
from cxrdask.archive.labels import LABELS
from cxrdask.errors import CxrDaskError, OptionError
from cxrdask.store.features import FeatureStore
from cxrdask.testing import make_feature_store


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("arch") / "features.zarr")
    make_feature_store(url, 300, feature_dim=32, chunk_rows=64, seed=1)
    return url


def run_python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_reading_a_store_imports_no_torch(store_url):
    out = run_python(
        "import sys\nfrom cxrdask import FeatureStore\n"
        f"store = FeatureStore.open({store_url!r})\n"
        "print(repr(store)); store.failures(); store.table(); store.rows('train'); "
        "store.to_xarray()\n"
        "print('torch' in sys.modules)\n")
    assert out.strip().endswith("False"), out


def test_planning_an_extraction_imports_no_torch(small_archive, tmp_path):
    """The client plans and submits; torch (seconds of a cold start) is the workers' only."""
    store = str(tmp_path / "planned.zarr")
    out = run_python(
        "import sys\nfrom cxrdask.extract.run import plan_extraction\n"
        f"plan = plan_extraction({small_archive.metadata_url!r}, {small_archive.root!r}, "
        f"{store!r}, weights='random')\n"
        "print(len(plan.rows), plan.spec.feature_dim, 'torch' in sys.modules)\n")
    assert out.split() == ["80", "2048", "False"], out


def test_importing_extract_features_leaves_pandas_and_zarr_to_the_call():
    """``extract_features`` starts its cluster first and imports pandas and zarr (0.8 s on
    one core) while the worker processes start; importing it must not import them before."""
    out = run_python("import sys\nfrom cxrdask import extract_features\n"
                     "print(*(m in sys.modules for m in ('pandas', 'zarr', 'torch')))\n")
    assert out.split() == ["False", "False", "False"], out


def test_a_worker_imports_neither_torchvision_nor_pandas(tmp_path):
    """A cold worker imports what its tasks need before its first image: torch and the
    extraction's worker side (about 2 s on one core). torchvision's import (1.5 s more) and
    pandas' (0.3 s) were paid by every worker of every cold-started job, and are not needed
    to build a backbone, run it and write a chunk."""
    url = str(tmp_path / "written.zarr")
    make_feature_store(url, 64, feature_dim=32, chunk_rows=32, seed=1)
    out = run_python(
        "import sys\nimport numpy as np\nimport cxrdask.extract.worker\n"
        "from cxrdask.backbones.runner import BackboneSpec, cached_runner\n"
        "from cxrdask.store.features import FeatureStore\n"
        "runner = cached_runner(BackboneSpec('resnet50', 'random', 0), 'cpu')\n"
        "assert runner(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 2048)\n"
        f"store = FeatureStore.open({url!r}, mode='r+')\n"
        "store.write_chunk(1, np.ones((32, 32), np.float32), np.ones(32, np.uint8), [''] * 32)\n"
        "print(float(store.read('features')[32:].mean()), *(m in sys.modules for m in "
        "('torchvision', 'pandas', 'torch._dynamo')))\n")
    assert out.split() == ["1.0", "False", "False", "False"], out


@pytest.mark.parametrize("gpu_file", [False, True], ids=["no-gpu-file", "a-gpu-file"])
def test_a_worker_says_what_auto_means_without_torch_where_there_is_no_gpu(gpu_file, tmp_path):
    """``precision="auto"`` is asked of the workers before the store is made; on a machine
    with no GPU device file the answer comes from the CPU's flags (the store is made while
    the worker imports torch), and where one exists torch itself is asked. Either way the
    answer is torch's own (``resolve_device``, ``resolve_precision``)."""
    from cxrdask.backbones.hardware import has_no_gpu

    if not has_no_gpu():
        pytest.skip("this machine has a GPU device file: the torch-free answer cannot be checked")
    files = (str(tmp_path),) if gpu_file else None  # an existing path standing for /dev/nvidia0
    out = run_python(
        "import asyncio, sys\nimport cxrdask.backbones.hardware\n"
        f"if {files!r}: cxrdask.backbones.hardware.GPU_DEVICE_FILES = {files!r}\n"
        "from cxrdask.extract.tasks import worker_hardware\n"
        "answer = asyncio.run(worker_hardware('auto', 'torch'))\n"
        "imported = 'torch' in sys.modules\n"
        "from cxrdask.backbones.runner import resolve_device\n"
        "from cxrdask.backbones.hardware import resolve_precision\n"
        "assert answer['precision'] == resolve_precision('auto', resolve_device('auto')), answer\n"
        "assert answer['device'] == resolve_device('auto').type == 'cpu', answer\n"
        "print(answer['precision'], imported)\n")
    precision, imported = out.split()
    assert precision in ("bf16", "fp32")
    assert imported == str(gpu_file), out


def test_the_web_page_imports_no_scikit_learn():
    pytest.importorskip("fastapi")
    out = run_python("import sys\nfrom cxrdask.serve.web import create_app\n"
                     "import cxrdask.serve.inference\nprint('sklearn' in sys.modules)\n")
    assert out.strip() == "False"


def test_every_error_is_a_cxrdask_error_and_not_found_errors_are_file_not_found():
    classes = [c for _, c in inspect.getmembers(errors_module, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == errors_module.__name__]
    assert len(classes) >= 20
    for cls in classes:
        assert issubclass(cls, CxrDaskError), cls
        if cls.__name__.endswith("NotFoundError"):
            assert issubclass(cls, FileNotFoundError), cls
    from cxrdask.archive.labels import LabelParseError
    from cxrdask.store.lease import StoreLockedError

    assert issubclass(LabelParseError, CxrDaskError) and issubclass(StoreLockedError, CxrDaskError)


def test_not_found_is_caught_as_file_not_found(tmp_path):
    from cxrdask.backbones.spec import BackboneSpec, file_sha256
    from cxrdask.head.model import load_checkpoint

    for attempt in (lambda: FeatureStore.open(str(tmp_path / "none.zarr")),
                    lambda: load_checkpoint(str(tmp_path / "none.pt")),
                    lambda: file_sha256(str(tmp_path / "none.pth"))):
        with pytest.raises(FileNotFoundError) as info:
            attempt()
        assert isinstance(info.value, CxrDaskError)
    assert BackboneSpec(weights="/DATA/W.PTH").kind == "file"  # a path, not an enum name
    assert BackboneSpec(weights="IMAGENET1K_V2").kind == "torchvision"


def test_extract_config_is_typed_validated_and_recorded():
    from dataclasses import FrozenInstanceError, replace

    from cxrdask.config import ExtractConfig

    config = ExtractConfig(weights="random", chunk_rows=32)
    with pytest.raises(FrozenInstanceError):
        config.dtype = "float32"  # type: ignore[misc]
    for bad in ({"precision": "fp64"}, {"engine": "tensorrt"}, {"chunk_rows": 0},
                {"chunk_rows": "many"}, {"max_failed_fraction": 2.0}, {"preset": "seed2019"}):
        with pytest.raises(OptionError):
            replace(config, **bad)
    with pytest.raises(OptionError, match="unknown extraction option"):
        ExtractConfig.with_options(config, weigths="random")
    assert ExtractConfig(preset="seed2018").split_method == "random"
    assert ExtractConfig(preset="seed2018").flip == "train"
    assert json.loads(json.dumps(config.to_dict()))["chunk_rows"] == 32


def test_presets_live_in_one_place():
    from cxrdask.config import TRAIN_PRESETS
    from cxrdask.head.train import TrainConfig

    assert TrainConfig.preset_config("seed2018").batch_size == TRAIN_PRESETS["seed2018"]["batch_size"]
    sources = "\n".join(p.read_text() for p in (Path(__file__).parent.parent / "cxrdask").rglob("*.py")
                        if p.name != "config.py")
    assert '"seed2018": {' not in sources and '"seed2018": dict(' not in sources


def test_the_store_speaks_xarray(store_url):
    xr = pytest.importorskip("xarray")
    store = FeatureStore.open(store_url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback from consolidated metadata, no other noise
        dataset = xr.open_zarr(store_url)
    assert dict(dataset.sizes) == {"image": 300, "feature": 32, "finding": 14, "chunk": 5,
                                   "signature_y": 32, "signature_x": 32}  # the images' signatures
    assert list(dataset["finding"].values) == list(LABELS)
    assert list(dataset["image"].values) == list(store.array("image_index")[:])
    assert dataset["features"].dims == ("image", "feature")
    assert dataset["labels"].dims == ("image", "finding")
    assert hasattr(dataset["features"].data, "dask")  # lazy
    effusion = dataset["labels"].sel(finding="Effusion").values
    assert np.array_equal(effusion, store.array("labels")[:, LABELS.index("Effusion")])
    mine = store.to_xarray()
    assert mine["features"].dims == ("image", "feature") and hasattr(mine["features"].data, "dask")
    np.testing.assert_array_equal(mine["features"].values, dataset["features"].values)
    assert mine.attrs["cxrdask"]["n_rows"] == 300


def test_store_repr_does_no_io(store_url, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store_url, copy)
    store = FeatureStore.open(str(copy))
    shutil.rmtree(copy / "done")  # a repr that read the done markers would now fail
    shutil.rmtree(copy / "status")
    text = repr(store)
    assert text.startswith("FeatureStore(") and "rows=300" in text and "chunks=5x64" in text


def test_dataloader_workers_share_the_chunks_each_row_once(tmp_path):
    """With num_workers=2 every batch came twice (each worker read every chunk)."""
    import collections

    import torch

    from cxrdask.head.batches import FeatureBatches

    url = str(tmp_path / "loader.zarr")
    make_feature_store(url, 700, feature_dim=16, chunk_rows=50, seed=3)
    dataset = FeatureBatches(url, "train", batch_size=32, shuffle=True, seed=1, buffer_chunks=2)
    expected = collections.Counter(row.numpy().tobytes() for x, _ in dataset for row in x)
    assert sum(expected.values()) == dataset.n_rows and max(expected.values()) == 1
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    for _epoch in range(2):
        seen = collections.Counter(row.numpy().tobytes() for x, _ in loader for row in x)
        assert seen == expected  # every row exactly once per epoch, none lost
    assert dataset.row_bound <= 2 * 50 + 32  # the out-of-core bound holds in each worker
