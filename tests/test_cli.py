"""The ``cxrdask`` command line, run as users run it (a subprocess), on tiny archives."""

from __future__ import annotations

import json
import time

import pytest
from helpers import cxrdask

from cxrdask.cli import build_parser, parse_storage_options
from cxrdask.store.features import FeatureStore


def test_every_command_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"info", "verify", "synth", "demo", "extract", "cache", "train",
                             "evaluate", "study", "overlap", "shift", "index", "neighbours",
                             "audit-labels", "predict", "serve"}
    for name in commands:
        assert cxrdask(name, "--help", check=True).stdout.startswith(f"usage: cxrdask {name}")


def test_info():
    out = cxrdask("info", check=True).stdout
    assert "torch" in out and "zarr" in out and "torch threads" in out and "CUDA" in out


def test_a_command_that_outlasts_its_time_says_where_it_was(tmp_path):
    """run_command's stall report: the command, asked with SIGUSR1, prints its threads'
    stacks and is stopped; the failure carries them (a hung CI run then says where)."""
    from helpers import CommandStalled

    started = time.perf_counter()
    with pytest.raises(CommandStalled) as stalled:  # 20,000 full-size images: minutes of work
        cxrdask("synth", str(tmp_path / "big"), "--n", "20000", "--size", "1024",
                "--threads", "1", timeout=6)
    message = str(stalled.value)
    assert "still ran after 6 s" in message
    assert "most recent call first" in message and "cxrdask/archive/synthetic" in message
    assert time.perf_counter() - started < 60  # stopped, not waited for


def test_storage_options_parse_json_values():
    options = parse_storage_options(['client_kwargs={"endpoint_url": "http://127.0.0.1:9000"}',
                                     "anon=false", "key=abc"])
    assert options == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
                       "anon": False, "key": "abc"}


def test_compile_is_auto_unless_asked(capsys):
    """``--compile`` alone still compiles; ``--compile auto|yes|no`` says which."""
    parser = build_parser()
    base = ["extract", "--images", "a", "--store", "s.zarr"]
    assert parser.parse_args(base).compile == "auto"
    assert parser.parse_args([*base, "--compile"]).compile is True
    assert parser.parse_args([*base, "--compile", "no"]).compile is False
    assert parser.parse_args([*base, "--compile", "yes"]).compile is True
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--compile", "maybe"])
    assert "auto, yes or no, not 'maybe'" in capsys.readouterr().err


@pytest.mark.slow
def test_synth_extract_train_evaluate(tmp_path):
    archive = tmp_path / "archive"
    out = cxrdask("synth", archive, "--n", 40, "--size", 96, "--threads", 1, "--quiet",
                  check=True).stdout
    assert "wrote 40 images" in out
    store = tmp_path / "f.zarr"
    out = cxrdask("extract", "--images", archive, "--store", store, "--weights", "random",
                  "--workers", 2, "--chunk-rows", 16, "--quiet", check=True).stdout
    assert "Dask dashboard: http" in out and "rows: " in out and "kaggle2017 variant" in out
    assert FeatureStore.open(str(store)).is_complete()
    again = cxrdask("extract", "--images", archive, "--store", store, "--weights", "random",
                    "--workers", 1, "--chunk-rows", 16, "--quiet", check=True).stdout
    assert "0 run, 3 skipped as already done" in again
    refused = cxrdask("extract", "--images", archive, "--store", store, "--weights", "random",
                      "--workers", 1, "--chunk-rows", 16, "--dtype", "float32", check=False)
    assert refused.returncode == 2 and "dtype: store has 'float16'" in refused.stderr
    out = cxrdask("train", "--store", store, "--out", tmp_path / "head", "--epochs", 3,
                  "--batch-size", 8, "--quiet", check=True).stdout
    assert "best validation loss" in out and (tmp_path / "head" / "head.pt").exists()
    out = cxrdask("evaluate", "--store", store, "--checkpoint", tmp_path / "head" / "head.pt",
                  "--out", tmp_path / "report", check=True).stdout
    assert "| disease | positives | AUC |" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(report["per_label"]) == 14


HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position")


@pytest.mark.parametrize("rows, message", [
    ("00000001_000.png,Pneumonitis,0,1,58,M,PA", "line 2 (image '00000001_000.png'), column "
                                                 "'Finding Labels': unknown label 'Pneumonitis'"),
    ("00000001_000.png,Mass,0,1,old,M,PA", "column 'Patient Age': not a valid patient age"),
    ("00000001_000.png,Mass,0,1,58,Q,PA", "column 'Patient Gender': unknown sex"),
    ("00000001_000.png,Mass,0,1,58,M,PA\n00000001_000.png,Mass,1,1,58,M,PA",
     "line 3 (image '00000001_000.png'), column 'Image Index': duplicate image index"),
])
def test_bad_metadata_exits_non_zero_and_writes_nothing(tmp_path, capsys, rows, message):
    from cxrdask.cli import main

    archive = tmp_path / "archive"
    (archive / "images").mkdir(parents=True)
    (archive / "Data_Entry_2017.csv").write_text(f"{HEADER}\n{rows}\n")
    code = main(["extract", "--images", str(archive), "--store", str(tmp_path / "f.zarr"),
                 "--weights", "random"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "f.zarr").exists()


def test_missing_column_exits_non_zero(tmp_path, capsys):
    from cxrdask.cli import main

    csv = tmp_path / "meta.csv"
    csv.write_text("Image Index,Finding Labels\n00000001_000.png,Mass\n")
    code = main(["extract", "--images", str(tmp_path), "--metadata", str(csv), "--store",
                 str(tmp_path / "f.zarr"), "--weights", "random"])
    assert code == 2 and "required column 'Follow-up #' is missing" in capsys.readouterr().err


def test_public_api_resolves():
    import cxrdask

    for name in cxrdask.__all__:
        assert getattr(cxrdask, name) is not None, name
    from cxrdask import evaluate, predict

    assert evaluate.__module__ == "cxrdask.evaluation.report"
    assert predict.__module__ == "cxrdask.serve.inference"


@pytest.mark.slow
def test_predict_command_matches_the_library(trained_checkpoint, small_archive, tmp_path):
    from pathlib import Path

    import pandas as pd

    from cxrdask.archive.labels import LABELS
    from cxrdask.serve.inference import predict

    images = sorted(str(p) for p in Path(small_archive.root).rglob("*.png"))[:3]
    out = cxrdask("predict", *images, "--checkpoint", trained_checkpoint, "--device", "cpu",
                  "--age", "40", "--sex", "F", "--csv", tmp_path / "p.csv", check=True).stdout
    assert all(label in out for label in LABELS)
    written = pd.read_csv(tmp_path / "p.csv")
    expected = predict(images, trained_checkpoint, age=40, sex="F", device="cpu")
    assert list(written["image"]) == [Path(p).name for p in images]
    # float32 probabilities from two processes: their threads may sum in another order
    # (1.02e-6 seen on a 2-core EPYC), a few ulps; a wrong input or model is off by far more.
    assert (written[list(LABELS)] - expected[list(LABELS)]).abs().to_numpy().max() < 1e-5
    missing = cxrdask("predict", tmp_path / "nope.png", "--checkpoint", trained_checkpoint,
                      check=False)
    assert missing.returncode == 2 and "nope.png" in missing.stderr
