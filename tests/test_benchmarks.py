"""The benchmark scripts run, as users run them (``python -m benchmarks.NAME`` from the
repository's root), on tiny inputs; no timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrdask.config import ExtractConfig
from cxrdask.extract.resolve import local_engine

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *map(str, args)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _saved(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


def test_bench_extract_writes_its_table_json_and_plot(tmp_path):
    out = tmp_path / "extract"
    result = run_script("bench_extract", "--n", 8, "--size", 128, "--archive", tmp_path / "archive",
                        "--layouts", "1x1", "--precisions", "fp32", "--batch-sizes", 8,
                        "--no-compile", "--no-onnxruntime", "--no-openvino", "--parts", "c",
                        "--seconds", 0.3, "--chunk-rows", 8, "--out", out)
    saved = json.loads(out.with_suffix(".json").read_text())
    rows = {row["what"]: row for row in saved["rows"] if "what" in row}
    measured = rows["(c) cxrdask fp32, 1 proc x 1 thr"]
    assert measured["images_per_s"] > 0 and measured["cpu_s_per_img"] > 0
    assert measured["output_mb"] > 0 and "forward" in measured["stages"]
    assert "bound fp32, " in result.stdout and out.with_suffix(".png").exists()


def test_bench_extract_times_a_jpeg_archives_first_pass_with_the_resize_on_the_device(tmp_path):
    """--layout chexpert: the first pass over gray JPEGs, resized by Pillow and on the device
    (on a GPU the device also decodes them; here the device is the CPU)."""
    out = tmp_path / "extract"
    run_script("bench_extract", "--layout", "chexpert", "--n", 24, "--size", 128, "--archive",
               tmp_path / "archive", "--layouts", "1x1", "--precisions", "fp32",
               "--batch-sizes", 8, "--no-compile", "--no-onnxruntime", "--no-openvino",
               "--parts", "c,r", "--seconds", 0.3, "--chunk-rows", 8, "--out", out)
    rows = {row["what"]: row for row in _saved(out)["rows"] if "what" in row}
    on_cpu = rows["(c) cxrdask fp32, 1 proc x 1 thr"]
    on_device = rows["(c) cxrdask fp32, 1 proc x 1 thr, resize on the device"]
    assert on_cpu["images_per_s"] > 0 and on_device["images_per_s"] > 0
    assert "decode" in on_device["stages"]
    refused = subprocess.run([sys.executable, "-m", "benchmarks.bench_extract",
                              "--layout", "chexpert", "--parts", "d"], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
    assert refused.returncode == 2 and "measures --parts k, c and r" in refused.stderr


def test_bench_store_compares_with_text(tmp_path):
    out = tmp_path / "store"
    run_script("bench_store", "--rows", 1024, "--chunk-rows", 256, "--images", 8, "--text-rows", 64,
               "--archive", tmp_path / "archive", "--out", out)
    rows = {row["what"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    text = rows["2018 text (name + 2048 floats per line)"]["bytes_per_row"]
    half = rows["Zarr float16, blosc zstd-5 + shuffle"]["bytes_per_row"]
    assert 30_000 < text < 45_000 and half < 4096 < text  # float16 raw is 4096 bytes a row


def test_bench_scale_times_every_stage_at_its_smallest_size(tmp_path):
    """The scale benchmark's smoke run: one small size, every stage (S3 and an extraction
    too); then the table and chart remade from its printed line, as a run per size is."""
    out = tmp_path / "scale"
    result = run_script("bench_scale", "--sizes", "600", "--rsna-rows", "200", "--s3", "--extract",
                        "--study-epochs", 1, "--study-bootstrap", 10, "--out", out)
    rows = {row["what"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    n = "N=600 (s)"
    for stage in ("read + validate metadata", "locate images (one listing)",
                  "resume check of the finished stores", "cxrdask info of each store",
                  "cxrdask verify of each store", "one training epoch over every store (lazy reader)",
                  "head, 50 epochs", "evaluate, 1,000 patient resamples",
                  "overlap: N rows against 200", "study: leave each archive out",
                  "S3: locate images (one listing)", "S3: resume check of the finished stores",
                  "S3: cxrdask info of each store", "extraction (all of it, warm-up excluded)"):
        assert rows[stage][n] > 0, stage
    # 600 images + the CSV and two lists: one page of a listing; the planted copies all found
    assert rows["S3 LIST requests of the listing"][n] == 1
    planted = rows["overlap: N rows against 200: planted copies found"][n]
    assert planted.split(" of ")[0] == planted.split(" of ")[1] != "0"
    assert "kept in memory" in rows["head, 50 epochs: memory"][n]
    assert "PUT" in rows["S3 requests of create a store of N rows"][n]
    assert "PUT" not in rows["S3 requests of cxrdask info of each store"][n]
    assert 0 <= rows["orchestration share of the workers' time"][n] < 0.5
    assert 100 < rows["client peak RSS (MB)"][n] < 4000
    assert "forward" in rows["extraction stages"][n]
    log = tmp_path / "run.log"
    log.write_text(result.stdout)
    run_script("bench_scale", "--from-log", log, log, "--out", tmp_path / "again")
    assert (tmp_path / "again.png").exists() and out.with_suffix(".png").exists()


def test_bench_scale_fits_each_stages_slope_over_n():
    from benchmarks.bench_scale import slopes

    rows = [{"n": n, "stages": {"linear": n * 1e-5, "quadratic": (n * 1e-4) ** 2, "flat": 0.3}}
            for n in (10_000, 100_000, 1_000_000)]
    assert slopes(rows) == pytest.approx({"linear": 1.0, "quadratic": 2.0, "flat": 0.0}, abs=1e-9)


def test_bench_peers_runs_each_contender_on_the_same_files_and_compares_outputs(tmp_path):
    out = tmp_path / "peers"
    run_script("bench_peers", "--n", 8, "--size", 128, "--archive", tmp_path / "archive",
               "--contenders", "cxrdask,cxrdask-cli,dataloader", "--precisions", "fp32",
               "--bound-seconds", 0.3, "--repeats", 2, "--out", out)
    saved = json.loads(out.with_suffix(".json").read_text())
    rows = {row["contender"]: row for row in saved["rows"]}
    engine = local_engine(ExtractConfig(precision="fp32"))
    assert set(rows) == {"cxrdask", "cxrdask-cli", "dataloader"}
    assert rows["cxrdask"]["engine"] == engine and rows["dataloader"]["engine"] == "torch"
    for row in rows.values():
        assert row["rows_lost"] == 0 and row["end_to_end_s"] > row["steady_s"] > 0
        # Two alternated rounds each, the median of their seconds reported.
        for kind in ("end_to_end_s", "steady_s"):
            rounds = [float(x) for x in row[f"{kind}_rounds"].split(", ")]
            assert len(rounds) == 2 and row[kind] == pytest.approx(sum(rounds) / 2, abs=0.01)
    # Same files, same model and preprocessing: the features agree to float16's precision.
    assert rows["dataloader"]["max_rel_diff_vs_cxrdask"] < 0.01
    # The command line as a user types it: the same engine, the same features.
    assert rows["cxrdask-cli"]["engine"] == engine
    assert rows["cxrdask-cli"]["max_rel_diff_vs_cxrdask"] < 0.01
    bound = saved["arguments"]["bounds"]["fp32"]
    # Scored against the fastest engine's bound, each engine measured in the same run.
    engines = [key.removeprefix("backbone_1_thread_") for key in bound
               if key.startswith("backbone_1_thread_")]
    assert {"torch", "onnxruntime", "openvino"} <= set(engines)
    assert bound["bound"] == max(bound[f"bound_{e}"] for e in engines)
    assert bound["bound"] == bound[f"bound_{bound['bound_engine']}"]
    # cxrdask's own settings are not its peers.
    assert rows["cxrdask"]["steady_best_peer"] == "dataloader"


def test_bench_train_measures_the_lazy_reader_the_baseline_and_a_full_run(tmp_path):
    """Its measuring paths (``--measure`` in a child process per figure, ``--full-run``
    through ``train_head``) on a 2,000-row store; a move of what they import breaks this."""
    out = tmp_path / "train"
    run_script("bench_train", "--sizes", 2000, "--batches", 256, "--max-rows", 512,
               "--dir", tmp_path / "stores", "--full-run", "--full-store-rows", 2000,
               "--epochs", 2, "--out", out)
    rows = {row["what"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    for mode in ("lazy", "memory"):
        measured = rows[f"2000 rows, batch 256, {mode}"]
        assert measured["s_per_epoch"] > 0 and measured["peak_rss_mb"] > 0
    full = next(row for what, row in rows.items() if what.startswith("train_head 2 epochs"))
    assert full["epochs"] == 2 and full["s_per_epoch"] > 0 and full["precision"] in ("fp32", "bf16")


def test_bench_evaluate_times_each_part_of_evaluate(tmp_path):
    out = tmp_path / "evaluate"
    result = run_script("bench_evaluate", "--rows", 3000, "--resamples", 20, "--epochs", 1,
                        "--store", tmp_path / "store.zarr", "--out", out)
    rows = {row["what"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows["AUC only (no intervals)"]["seconds"] > 0
    with_intervals = rows["+ 20 patient resamples"]
    assert with_intervals["seconds"] > 0 and "[" in with_intervals["interval"]
    assert rows["+ a second head compared"]["test images"] == with_intervals["test images"] > 0
    assert "bench_evaluate" in result.stdout


def test_bench_backbones_measures_every_family_on_each_cpu_engine(tmp_path):
    """A DINOv2-S/14-shaped transformer (an hf: folder the benchmark writes) in fp32 and bf16
    (the exporting engines are held to eager PyTorch in tests/test_transformer_backbones.py)."""
    out = tmp_path / "backbones.csv"
    result = run_script("bench_backbones", "--backbones", "dinov2-s14-shaped", "--rounds", 1,
                        "--seconds", 0.2, "--batch", 2, "--engines", "torch/fp32,torch/bf16",
                        "--out", out)
    import pandas as pd

    rows = pd.read_csv(out)  # one family here (each figure is a process of its own)
    assert set(rows["backbone"]) == {"dinov2-s14-shaped"} and set(rows["size"]) == {224}
    assert set(rows["precision"]) == {"fp32", "bf16"} and (rows["images_per_s"] > 0).all()
    assert set(rows["features"]) == {384}
    assert "one CPU thread" in result.stdout


def test_bench_fixed_cost_times_a_cold_start_to_the_first_feature(tmp_path):
    out = tmp_path / "fixed"
    run_script("bench_fixed_cost", "--n", 4, "--size", 64, "--runs", 1, "--workers", 1,
               "--archive", tmp_path / "archive", "--out", out)
    rows = {row["what"]: row for row in _saved(out)["rows"]}
    assert rows and all(row["median (s)"] > 0 for row in rows.values())


def test_bench_pixels_compares_decoders_and_compressions(tmp_path):
    out = tmp_path / "pixels"
    run_script("bench_pixels", "--n", 6, "--size", 64, "--chunk-rows", 3,
               "--archive", tmp_path / "archive", "--out", out)
    whats = [row["what"] for row in _saved(out)["rows"]]
    assert any("mean size" in what for what in whats) and len(whats) > 3


def test_bench_s3_extracts_from_local_disk_and_a_local_s3_server(tmp_path):
    out = tmp_path / "s3"
    run_script("bench_s3", "--n", 4, "--size", 64, "--workers", 1, "--out", out)
    rows = _saved(out)["rows"]
    assert {row["what"].split(",")[0] for row in rows} == {"local disk", "S3 (moto)"}
    assert all(row["images_per_s"] > 0 for row in rows)


def test_bench_web_loads_the_page_server_with_concurrent_uploads(tmp_path):
    out = tmp_path / "web"
    run_script("bench_web", "--requests", 2, "--concurrency", "1,2", "--size", 64, "--out", out)
    rows = _saved(out)["rows"]
    assert len(rows) == 4 and all(row["requests_per_s"] > 0 for row in rows)


def test_bench_compile_measures_the_compile_and_its_break_even(tmp_path):
    out = tmp_path / "compile"
    run_script("bench_compile", "--precisions", "fp32", "--seconds", 0.2, "--size", 32,
               "--out", out)
    assert _saved(out)["rows"]


def test_bench_overlap_finds_the_planted_copies_and_no_other(tmp_path):
    out = tmp_path / "overlap"
    result = run_script("bench_overlap", "--a-rows", 600, "--b-rows", 200, "--planted", 40,
                        "--size", 128, "--model-size", 112, "--out", out)
    rows = {row["what"].split(" (")[0]: row for row in _saved(out)["rows"]}
    assert rows["B among A"]["recall"] == 1.0 and rows["B among A"]["false pairs"] == 0
    assert rows["repeats within A"]["pairs"] == 0
    alike = rows["distinct images of one patient"]
    assert alike["highest detail correlation"] < alike["threshold"] and "bench_overlap on" in result.stdout


def test_bench_dicom_headers_reads_no_pixel_data(tmp_path):
    out = tmp_path / "headers"
    result = run_script("bench_dicom_headers", "--files", 300, "--side", 256, "--workers", 1,
                        "--out", out)
    rows = {row["what"].split(",")[0] + row["what"].split(",")[1]: row for row in _saved(out)["rows"]}
    assert len(rows) == 3 and "bench_dicom_headers on" in result.stdout
    for name, row in rows.items():
        if name.startswith("headers"):
            assert row["unreadable"] == 0 and row["distinct patients"] == 100
            assert row["share of the files' bytes"] < 0.01  # 128 KB files, under 1 KB read
        else:
            assert row["share of the files' bytes"] == 1.0


def test_bench_neighbours_times_the_build_and_the_queries(tmp_path):
    out = tmp_path / "neighbours"
    run_script("bench_neighbours", "--rows", 2000, "--dim", 64, "--queries", 20, "--out", out)
    rows = {row["what"].split(" (")[0].split(":")[0]: row for row in _saved(out)["rows"]}
    assert rows["build the index"]["rows"] == 2000
    assert rows["neighbours(store, row, k)"]["median_ms"] > 0
    recall = [row for row in _saved(out)["rows"] if row["what"].startswith("compare: float16")]
    assert recall and recall[0]["recall_at_5"] >= 0.99  # float16 finds float32's top 5
