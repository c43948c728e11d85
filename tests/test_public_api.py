"""The public API reads alike: every public name is exported from the module that defines it,
every module says what it exports, old spellings keep working for one release with a
DeprecationWarning, and a store describes its codes to xarray users (CF flag attributes)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest

import cxrdask
from cxrdask.errors import OptionError

PACKAGE = pathlib.Path(cxrdask.__file__).parent


def test_every_public_name_is_exported_from_where_it_is_defined():
    for name, module in cxrdask._EXPORTS.items():
        where = importlib.import_module(f"cxrdask.{module}")
        value = getattr(where, name)
        assert name in where.__all__, f"cxrdask.{module}.__all__ lacks {name}"
        defined = getattr(value, "__module__", None)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert defined == f"cxrdask.{module}", f"{name} is defined in {defined}, exported from {module}"
        assert getattr(cxrdask, name) is value


def test_every_module_says_what_it_exports():
    """Each module lists its public names in __all__, and each listed name exists in it."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py":
            assert ast.get_docstring(tree), f"{name} has no docstring saying what it holds"
            continue
        if name in ("cxrdask.archive.metadata",):  # a deprecated alias, checked below
            continue
        listed = [node for node in tree.body if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
        assert listed, f"{name} has no __all__"
        module = importlib.import_module(name)
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what it lacks: {missing}"


def test_storage_options_are_keyword_only_in_the_public_api():
    for name in cxrdask.__all__:
        if name == "__version__":
            continue
        value = getattr(cxrdask, name)
        functions = ([getattr(value, m) for m in ("open", "create") if hasattr(value, m)]
                     if inspect.isclass(value) else [value] if callable(value) else [])
        for function in functions:
            try:
                parameters = inspect.signature(function).parameters
            except (TypeError, ValueError):
                continue
            option = parameters.get("storage_options")
            assert option is None or option.kind is option.KEYWORD_ONLY, \
                f"{name}.{function.__name__}: storage_options is not keyword-only"


def test_one_name_for_worker_processes_configs_boxes_and_images():
    """n_workers for Dask worker processes, threads for threads, config= for a job's config,
    boxes= and images= where EvaluateConfig spells them so."""
    from cxrdask.config import EvaluateConfig

    assert "n_workers" in inspect.signature(cxrdask.run_demo).parameters
    assert "n_workers" in inspect.signature(cxrdask.extract_features).parameters
    assert "threads" in inspect.signature(cxrdask.make_archive).parameters
    assert "config" in inspect.signature(cxrdask.grid_search).parameters
    localise = inspect.signature(cxrdask.localise).parameters
    assert list(localise)[2:4] == ["boxes", "images"]
    assert {"boxes", "images", "n_workers"} <= set(EvaluateConfig.__dataclass_fields__)


def test_old_spellings_warn_and_still_work(tmp_path):
    from cxrdask.testing import make_feature_store

    with pytest.warns(DeprecationWarning, match=r"make_archive\(workers=...\) is deprecated.*threads="):
        archive = cxrdask.make_archive(str(tmp_path / "archive"), n=4, size=32, threads=None, workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling warns of nothing
        assert len(cxrdask.read_metadata(archive.metadata_url)) == 4
    with pytest.warns(DeprecationWarning, match="pass storage_options by keyword"):
        frame = cxrdask.read_metadata(archive.metadata_url, None)
    assert len(frame) == 4
    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 40, feature_dim=8, chunk_rows=16)
    with pytest.warns(DeprecationWarning, match="pass storage_options by keyword"):
        store = cxrdask.FeatureStore.open(url, None, "r+")  # its old positional mode too
    assert store.n_rows == 40 and store.group.read_only is False
    with pytest.raises(OptionError, match=r"give config= only \(base= is its deprecated name\)"):
        cxrdask.grid_search(url, config=cxrdask.TrainConfig(), base=cxrdask.TrainConfig())
    with pytest.raises(OptionError, match="give threads= only"):
        cxrdask.make_archive(str(tmp_path / "b"), n=2, threads=1, workers=1)


def test_the_old_metadata_module_warns_and_reads_alike(tmp_path):
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c",
         "import cxrdask.archive.metadata"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "cxrdask.archive.metadata is deprecated" in run.stderr
    with pytest.warns(DeprecationWarning):
        old = importlib.reload(importlib.import_module("cxrdask.archive.metadata"))
    from cxrdask.archive.kinds import nih

    assert old.read_metadata is nih.read_metadata and old.CSV_NAMES is nih.CSV_NAMES


def test_the_old_synth_option_still_works(tmp_path):
    from cxrdask.cli import build_parser

    parser = build_parser(only="synth")  # --threads and --workers: one option, two names
    assert parser.parse_args(["synth", "root", "--threads", "3"]).threads == 3
    assert not hasattr(parser.parse_args(["synth", "root"]), "workers")
    run = subprocess.run([sys.executable, "-m", "cxrdask.cli", "synth", str(tmp_path / "b"),
                          "--n", "3", "--size", "32", "--workers", "1", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "--workers is deprecated and goes in the next release: use --threads" in run.stderr
    assert "wrote 3 images" in run.stdout


def test_load_backbone_takes_a_spec_or_a_name():
    from cxrdask.backbones.spec import BackboneSpec

    spec = BackboneSpec(name="resnet18", weights="random", seed=4)
    one = cxrdask.load_backbone(spec, device="cpu")
    two = cxrdask.load_backbone("resnet18", weights="random", seed=4, device="cpu")
    first = next(one.parameters()).detach().numpy()
    assert np.array_equal(first, next(two.parameters()).detach().numpy())
    with pytest.raises(OptionError, match="carries its weights and seed"):
        cxrdask.load_backbone(spec, weights="imagenet")


def test_a_stores_codes_describe_themselves_to_xarray(tmp_path):
    """status, split and labels carry CF conventions' flag_values and flag_meanings, so
    xarray.open_zarr users decode them without reading cxrdask's code."""
    import xarray as xr

    from cxrdask.testing import make_feature_store

    url = str(tmp_path / "f.zarr")
    make_feature_store(url, 40, feature_dim=8, chunk_rows=16)
    data = xr.open_zarr(url)
    for variable, meanings in (("status", {0: "pending", 1: "ok", 2: "failed"}),
                               ("split", {0: "train", 1: "validation", 2: "test"}),
                               ("labels", {0: "negative", 1: "positive", 255: "missing"})):
        attrs = data[variable].attrs
        decoded = dict(zip(attrs["flag_values"], attrs["flag_meanings"].split(), strict=True))
        assert decoded == meanings, variable
    split_names = np.array(data["split"].attrs["flag_meanings"].split())[data["split"].values]
    assert set(split_names) <= {"train", "validation", "test"} and len(split_names) == 40


def test_the_api_reference_lists_every_public_name_where_it_is_defined():
    reference = (PACKAGE.parent / "docs" / "reference.md").read_text()
    missing = [f"cxrdask.{module}.{name}" for name, module in cxrdask._EXPORTS.items()
               if f"::: cxrdask.{module}.{name}\n" not in reference]
    assert not missing, f"docs/reference.md lacks {missing}"
