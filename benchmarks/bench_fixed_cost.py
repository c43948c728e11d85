"""The fixed cost of a job: from a cold start to the first feature written, and what a second
call in the same Python session still pays.

Each run is a fresh Python process that imports cxrdask and calls ``extract_features`` on a
small archive of NIH-size PNGs with no client (a local cluster of ``--workers`` processes,
default 2; ``--workers auto``: the layout the defaults choose; eager, ``--precision`` fp32
and ``--engine`` torch by default), then calls it again on a new store in the same process
(the cluster and the workers' models are kept for the session). The parent watches each
store's done markers and records when the first chunk landed, counted from the moment it
started the process: interpreter start, imports, the checks, the cluster, the model, the
first chunk. With ONNX Runtime, ``--export-cache empty`` (each run exports the network, a
machine's first run) or ``warm`` (the export cached by an untimed run first, every later run).

    python -m benchmarks.bench_fixed_cost              # 3 cold starts, 64 images
    python -m benchmarks.bench_fixed_cost --workers auto --precision auto --engine auto
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import archive_for, machine, save_results, table

CHILD = """
import sys, time
from cxrdask import extract_features
metadata, root, first, second, precision, engine, workers = sys.argv[1:8]
for store in (first, second):
    started = time.time()
    extract_features(metadata, root, store, weights="random", precision=precision, engine=engine,
                     n_workers=None if workers == "auto" else int(workers), progress=False)
    print(f"done {store} {started} {time.time()}", flush=True)
"""


def first_chunk_time(store: str, stop: threading.Event, found: dict) -> None:
    """Poll ``store`` until one of its chunks is done; record the wall-clock time.

    A done marker is a file of the store's ``done`` array (written only where set), so the
    poll lists that folder, and opens the store only to confirm a marker it sees. Opening
    the store every 20 ms instead took 0.28 of a core, taken from the job it times on 2 cores."""
    from cxrdask.store.features import FeatureStore

    markers = Path(store) / "done" / "c"
    while not stop.is_set():
        try:
            if any(markers.iterdir()):
                seen = time.time()
                if FeatureStore.open(store).done_chunks().any():
                    found[store] = seen
                    return
        except Exception:  # not made yet, or being written: look again
            pass
        time.sleep(0.02)


def one_run(metadata: str, root: str, directory: Path, args, cache: Path) -> dict:
    first, second = str(directory / "first.zarr"), str(directory / "second.zarr")
    found: dict[str, float] = {}
    stop = threading.Event()
    watchers = [threading.Thread(target=first_chunk_time, args=(s, stop, found), daemon=True)
                for s in (first, second)]
    for watcher in watchers:
        watcher.start()
    launched = time.time()
    result = subprocess.run([sys.executable, "-c", CHILD, metadata, root, first, second,
                             args.precision, args.engine, args.workers],
                            capture_output=True, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1", "CXRDASK_CACHE_DIR": str(cache)})
    stop.set()
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    calls = {}
    for line in result.stdout.splitlines():
        if line.startswith("done "):
            _, store, started, ended = line.split()
            calls[store] = (float(started), float(ended))
    return {
        "cold: start to first feature written (s)": found[first] - launched,
        "cold: whole job (s)": calls[first][1] - launched,
        "second call: to first feature written (s)": found[second] - calls[second][0],
        "second call: whole job (s)": calls[second][1] - calls[second][0],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images in the archive")
    parser.add_argument("--size", type=int, default=1024, help="image side (NIH's: 1024)")
    parser.add_argument("--runs", type=int, default=3, help="cold starts (the median is reported)")
    parser.add_argument("--precision", default="fp32",
                        help="fp32 (the figures in docs/benchmarks.md) or auto (extract_features's default)")
    parser.add_argument("--engine", default="torch",
                        choices=("auto", "torch", "onnxruntime", "openvino"))
    parser.add_argument("--workers", default="2", help="local worker processes, or auto")
    parser.add_argument("--export-cache", default="empty", choices=("empty", "warm"),
                        help="ONNX export cache at each cold start")
    parser.add_argument("--archive", default=os.path.join(tempfile.gettempdir(),
                                                          "cxrdask-bench-fixed-cost"))
    parser.add_argument("--out", default="benchmarks/results/bench_fixed_cost")
    args = parser.parse_args(argv)
    root, metadata = archive_for(Path(args.archive), args.n, args.size)
    runs = []
    shared_cache = Path(tempfile.mkdtemp(prefix="bench-fixed-cache-"))
    for index in range(args.runs + (args.export_cache == "warm")):
        directory = Path(tempfile.mkdtemp(prefix="bench-fixed-"))
        cache = shared_cache if args.export_cache == "warm" else directory / "cache"
        try:
            run = one_run(metadata, root, directory, args, cache)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if args.export_cache == "warm" and index == 0:
            continue  # untimed: it fills the export cache
        runs.append(run)
        print(runs[-1], flush=True)
    shutil.rmtree(shared_cache, ignore_errors=True)
    rows = [{"what": name, "median (s)": statistics.median(r[name] for r in runs),
             "runs (s)": ", ".join(f"{r[name]:.2f}" for r in runs)} for name in runs[0]]
    header = (f"bench_fixed_cost on {machine()}: {args.n} PNGs of {args.size}x{args.size}, "
              f"workers {args.workers}, precision {args.precision}, engine {args.engine}, "
              f"export cache {args.export_cache}")
    save_results(args.out, rows, header, vars(args))
    print(table(rows, header))
    print(json.dumps({r["what"]: round(r["median (s)"], 2) for r in rows}))


if __name__ == "__main__":
    main()
