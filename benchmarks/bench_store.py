"""The feature store on disk: bytes per row (float16, float32) against the 2018 text files,
write and read throughput per chunk, and the full archive's size projected.

    python -m benchmarks.bench_store --rows 20480

Features are real: ResNet50 (random weights, seed 0) outputs for the synthetic 1024x1024
images of ``bench_extract``'s archive. The store's rows are drawn from them with 1%
multiplicative noise, so no two rows are equal (exact repeats would compress unrealistically).
The text format is the 2018 system's: ``image,f1,...,f2048`` with Python's float repr.
Prints a table last and writes JSON and a PNG next to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SPEC, archive_for, disk_bytes, machine, save_results, table
from benchmarks.spark_2018 import text_line
from cxrdask.archive.images import locate_images
from cxrdask.archive.kinds.nih import read_metadata
from cxrdask.store.features import STATUS_OK, FeatureStore
from cxrdask.testing import direct_features, make_feature_store

FULL_ARCHIVE = 112_120


def real_features(n: int, archive: str) -> np.ndarray:
    """Backbone features of ``n`` synthetic 1024x1024 X-rays."""
    root, metadata = archive_for(Path(archive), n, 1024)
    frame = read_metadata(metadata, max_age=10_000)
    urls = locate_images(root).urls_for(frame["image_index"])
    return direct_features(urls, SPEC)


def rows_like(features: np.ndarray, n_rows: int, seed: int = 0) -> np.ndarray:
    """``n_rows`` rows drawn from ``features`` with 1% multiplicative noise."""
    rng = np.random.default_rng(seed)
    picked = features[rng.integers(0, len(features), n_rows)]
    return (picked * (1 + 0.01 * rng.standard_normal(picked.shape))).astype(np.float32)


def measure_store(url: str, rows: np.ndarray, chunk_rows: int, dtype: str) -> dict:
    """Write every chunk (as extraction does), then read every chunk back; bytes and speeds."""
    make_feature_store(url, len(rows), feature_dim=rows.shape[1], chunk_rows=chunk_rows,
                       dtype=dtype, seed=0)
    store = FeatureStore.open(url, mode="r+")
    writes, reads = [], []
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        status = np.full(stop - start, STATUS_OK, dtype=np.uint8)
        began = time.perf_counter()
        store.write_chunk(chunk, rows[start:stop], status, [""] * (stop - start))
        writes.append(time.perf_counter() - began)
    features = store.array("features")
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        began = time.perf_counter()
        block = features[start:stop]
        reads.append(time.perf_counter() - began)
    assert np.allclose(block, rows[start:stop].astype(dtype), equal_nan=True)
    feature_bytes = disk_bytes(Path(url) / "features")
    return {"feature_bytes": feature_bytes, "store_bytes": disk_bytes(url),
            "write_rows_per_s": len(rows) / sum(writes), "read_rows_per_s": len(rows) / sum(reads),
            "write_ms_per_chunk": 1000 * float(np.median(writes)),
            "read_ms_per_chunk": 1000 * float(np.median(reads))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_480, help="rows in the measured store")
    parser.add_argument("--chunk-rows", type=int, default=512)
    parser.add_argument("--text-rows", type=int, default=4096,
                        help="rows written as 2018 text (36 KB each)")
    parser.add_argument("--images", type=int, default=96, help="real images to take features of")
    parser.add_argument("--archive", default=os.path.join(tempfile.gettempdir(), "cxrdask-bench-archive"))
    parser.add_argument("--out", default="benchmarks/results/bench_store")
    args = parser.parse_args(argv)

    features = real_features(args.images, args.archive)
    rows = rows_like(features, args.rows)
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
    results = []
    try:
        text = workdir / "features.txt"
        text_rows = rows[: args.text_rows]
        began = time.perf_counter()
        with open(text, "w") as handle:
            for i, vector in enumerate(text_rows):
                handle.write(text_line(f"{i:08d}_000.png", vector) + "\n")
        text_seconds = time.perf_counter() - began
        text_per_row = disk_bytes(text) / len(text_rows)
        results.append({"what": "2018 text (name + 2048 floats per line)", "bytes_per_row": text_per_row,
                        "write_rows_per_s": len(text_rows) / text_seconds})
        for dtype in ("float16", "float32"):
            measured = measure_store(str(workdir / f"{dtype}.zarr"), rows, args.chunk_rows, dtype)
            per_row = measured["feature_bytes"] / len(rows)
            raw = np.dtype(dtype).itemsize * rows.shape[1]
            results.append({
                "what": f"Zarr {dtype}, blosc zstd-5 + shuffle", "bytes_per_row": per_row,
                "compression": raw / per_row, "vs_text": text_per_row / per_row,
                "write_rows_per_s": measured["write_rows_per_s"],
                "read_rows_per_s": measured["read_rows_per_s"],
                "write_ms_per_chunk": measured["write_ms_per_chunk"],
                "read_ms_per_chunk": measured["read_ms_per_chunk"],
                "whole_store_bytes_per_row": measured["store_bytes"] / len(rows)})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in results:
        per_row = row.get("whole_store_bytes_per_row", row["bytes_per_row"])
        row["full_archive_gb"] = per_row * FULL_ARCHIVE / 1e9
    header = (f"bench_store on {machine()}: {args.rows} rows x 2048 (chunks of {args.chunk_rows}), "
              f"features of {len(features)} real images; full archive = {FULL_ARCHIVE:,} rows")
    save_results(args.out, results, header, vars(args), plot_column="bytes_per_row")
    print(table(results, header))


if __name__ == "__main__":
    main()
