"""Load check of the web page's API: N concurrent uploads of 1024x1024 PNGs to ``cxrdask serve``.

    python -m benchmarks.bench_web --requests 48 --concurrency 1,4,16

Starts the server as a user would (``cxrdask serve`` on 127.0.0.1), on a head checkpoint
given with ``--checkpoint`` or trained here on a small synthetic archive (random-weight
ResNet50). Reports requests/s and p50/p95 latency per concurrency, with and without the
Grad-CAM heatmaps. Prints a table last and writes JSON and a PNG next to it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import machine, save_results, table
from cxrdask.testing import free_port


def small_checkpoint(workdir: Path) -> str:
    """A head trained for 3 epochs on random-weight ResNet50 features of 48 small images."""
    from cxrdask.archive.synthetic import make_archive
    from cxrdask.extract.run import extract_features
    from cxrdask.head.train import TrainConfig, train_head

    archive = make_archive(str(workdir / "train-archive"), n=48, size=128, seed=1)
    store = str(workdir / "features.zarr")
    extract_features(archive.metadata_url, archive.root, store, weights="random", chunk_rows=16,
                     split="patient", progress=False)
    return train_head(store, TrainConfig(epochs=3, batch_size=16), workdir / "head",
                      progress=False).checkpoint


def start_server(checkpoint: str, port: int, max_concurrent: int, log: Path) -> subprocess.Popen:
    """``cxrdask serve`` in a subprocess; returns once ``/api/health`` answers."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxrdask.cli", "serve", "--checkpoint", checkpoint, "--device",
             "cpu", "--port", str(port), "--max-concurrent", str(max_concurrent),
             "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"cxrdask serve did not start:\n{log.read_text()}")


def load(url: str, uploads: list[tuple[str, bytes]], requests: int, concurrency: int,
         heatmaps: bool) -> dict:
    """``requests`` uploads from ``concurrency`` clients at once: requests/s and latencies."""

    def one(i: int) -> float:
        name, data = uploads[i % len(uploads)]
        start = time.perf_counter()
        response = httpx.post(url + "/api/predict", params={"heatmaps": heatmaps}, timeout=600,
                              files={"file": (name, data, "image/png")})
        response.raise_for_status()
        return time.perf_counter() - start

    one(0)  # warm
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = np.array(list(pool.map(one, range(requests))))
    seconds = time.perf_counter() - start
    return {"requests_per_s": requests / seconds, "p50_ms": 1000 * np.percentile(latencies, 50),
            "p95_ms": 1000 * np.percentile(latencies, 95)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a head.pt (default: train a small one here)")
    parser.add_argument("--requests", type=int, default=48, help="uploads per measurement")
    parser.add_argument("--concurrency", default="1,4,16", help="clients at once, comma list")
    parser.add_argument("--max-concurrent", type=int, default=1,
                        help="the server's --max-concurrent (images computed at once)")
    parser.add_argument("--size", type=int, default=1024, help="side of the uploaded PNGs")
    parser.add_argument("--out", default="benchmarks/results/bench_web")
    args = parser.parse_args(argv)

    from cxrdask.archive.synthetic import make_archive

    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    checkpoint = args.checkpoint or small_checkpoint(workdir)
    archive = make_archive(str(workdir / "uploads"), n=8, size=args.size, seed=2)
    uploads = [(p.name, p.read_bytes()) for p in sorted(Path(archive.root).rglob("*.png"))]
    port = free_port()
    server = start_server(checkpoint, port, args.max_concurrent, workdir / "serve.log")
    rows = []
    try:
        for heatmaps in (True, False):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                result = load(f"http://127.0.0.1:{port}", uploads, args.requests, concurrency,
                              heatmaps)
                rows.append({"what": f"{concurrency} clients, heatmaps {'on' if heatmaps else 'off'}",
                             **result})
                print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    mean_kb = np.mean([len(d) for _, d in uploads]) / 1e3
    header = (f"bench_web on {machine()}: {args.requests} uploads of {args.size}x{args.size} PNGs "
              f"(~{mean_kb:.0f} KB), server --max-concurrent {args.max_concurrent}, "
              f"{os.cpu_count()} cores")
    save_results(args.out, rows, header, vars(args), plot_column="requests_per_s")
    print(table(rows, header))


if __name__ == "__main__":
    main()
