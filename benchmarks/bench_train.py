"""Out-of-core head training: seconds per epoch and peak memory against store size.

    python -m benchmarks.bench_train --sizes 10000,100000,1000000 --full-run

Stores of N rows x 2048 float16 features are written straight into Zarr (no images). Each
figure runs in its own process so its peak RSS is its own: the lazy chunk reader
(``FeatureBatches``) against an in-memory baseline (the whole training split loaded into
one tensor first). ``--full-run`` times ``train_head`` for 50 epochs over the NIH-sized
store (78,000-odd training rows) at batch 256, the target of the training issue; with
``--full-store-rows 112120,223414`` one head over two stores (NIH's and CheXpert's sizes).

    python -m benchmarks.bench_train --sizes "" --full-run --full-store-rows 112120,223414
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine, peak_rss_mb, save_results, table


def measure(store_url: str, batch: int, mode: str, max_rows: int) -> dict:
    """One training pass (capped at ``max_rows``) in this process; seconds per full epoch."""
    from cxrdask.config import TrainConfig
    from cxrdask.head.batches import FeatureBatches
    from cxrdask.head.model import DiagnosisHead
    from cxrdask.head.train_step import adam

    torch.set_num_threads(1)
    batches = FeatureBatches(store_url, "train", batch, seed=0)
    head = DiagnosisHead(batches.n_inputs)
    c = TrainConfig()
    optimizer = adam(head.parameters(), c.lr, c.weight_decay, c.betas, c.eps, torch.device("cpu"))
    criterion = torch.nn.BCEWithLogitsLoss()
    load_s = 0.0
    if mode == "memory":
        start = time.perf_counter()
        x = torch.cat([b[0] for b in FeatureBatches(store_url, "train", 65536, shuffle=False)])
        y = torch.cat([b[1] for b in FeatureBatches(store_url, "train", 65536, shuffle=False)])
        load_s = time.perf_counter() - start
        order = torch.randperm(len(x))

        def source():
            for i in range(0, len(x), batch):
                rows = order[i:i + batch]
                yield x[rows], y[rows]
    else:
        def source():
            return iter(batches)
    rows, start = 0, time.perf_counter()
    for inputs, targets in source():
        loss = criterion(head(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows += len(inputs)
        if rows >= max_rows:
            break
    seconds = time.perf_counter() - start
    return {"rows_timed": rows, "train_rows": batches.n_rows,
            "s_per_epoch": seconds * batches.n_rows / rows, "load_s": load_s,
            "peak_rss_mb": peak_rss_mb(), "max_rows_held": batches.max_rows_held}


def ensure_store(directory: Path, n: int) -> str:
    from cxrdask.store.features import FeatureStore
    from cxrdask.testing import make_feature_store

    url = str(directory / f"features_{n}.zarr")
    if not (FeatureStore.exists(url) and FeatureStore.open(url).n_rows == n):
        start = time.perf_counter()
        make_feature_store(url, n, signal=0.3)
        print(f"wrote a {n}-row store in {time.perf_counter() - start:.1f} s", flush=True)
    return url


def run_child(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_train", *args],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


FULL_RUN_VARIANTS = {  # name: TrainConfig fields
    "default": {},
    "lazy-fp32": {"resident_mb": 0, "precision": "fp32"},  # every epoch from the store, fp32
    "resident-fp32": {"precision": "fp32"},
    "lazy-auto": {"resident_mb": 0},
    "eager": {"cuda_graph": False},  # on a GPU: every step launched from Python
}


def full_run(store_url: str, epochs: int, device: str = "cpu", variant: str = "default",
             batch: int = 256) -> dict:
    """train_head for ``epochs`` epochs, without early stopping (the real API); several
    stores (their URLs joined by commas) train one head."""
    from cxrdask.config import TrainConfig
    from cxrdask.head.model import load_checkpoint
    from cxrdask.head.train import train_head

    config = TrainConfig(epochs=epochs, batch_size=batch, early_stopping=None,
                         **FULL_RUN_VARIANTS[variant])
    stores = store_url.split(",")
    result = train_head(stores if len(stores) > 1 else stores[0], config,
                        tempfile.mkdtemp(prefix="bench-train-"),
                        progress=False, plot=False, device=device)
    used = load_checkpoint(result.checkpoint).config["precision"]
    return {"seconds": result.seconds, "epochs": len(result.history),
            "s_per_epoch": result.seconds / len(result.history), "peak_rss_mb": peak_rss_mb(),
            "device": device, "precision": used, "best_val_loss": result.best_val_loss,
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--batches", default="10,256,1024")
    parser.add_argument("--max-rows", type=int, default=60_000,
                        help="rows timed per figure; seconds per epoch are scaled from them")
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "cxrdask-bench-train"))
    parser.add_argument("--full-run", action="store_true",
                        help="also time 50 epochs of train_head on a 112,120-row store")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where --full-run trains the head")
    parser.add_argument("--out", default="benchmarks/results/bench_train")
    parser.add_argument("--measure", nargs=4, metavar=("STORE", "BATCH", "MODE", "MAX_ROWS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--variants", default="default",
                        help=f"--full-run configurations, comma list of {', '.join(FULL_RUN_VARIANTS)}")
    parser.add_argument("--full-store-rows", default="112120",
                        help="rows of the --full-run store; a comma list: one head on several")
    parser.add_argument("--measure-full", nargs=5,
                        metavar=("STORE", "EPOCHS", "DEVICE", "VARIANT", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        store, batch, mode, max_rows = args.measure
        print(json.dumps(measure(store, int(batch), mode, int(max_rows))))
        return
    if args.measure_full:
        store, epochs, device, variant, batch = args.measure_full
        print(json.dumps(full_run(store, int(epochs), device, variant, int(batch))))
        return

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in (int(v) for v in args.sizes.split(",") if v):
        url = ensure_store(directory, n)
        for batch in args.batches.split(","):
            for mode in ("lazy", "memory"):
                if mode == "memory" and n * 2050 * 4 * 0.7 > 0.6 * os.sysconf("SC_PAGE_SIZE") \
                        * os.sysconf("SC_PHYS_PAGES"):
                    continue  # the baseline would not fit in memory
                result = run_child("--measure", url, batch, mode, str(args.max_rows))
                rows.append({"what": f"{n} rows, batch {batch}, {mode}", **result})
                print(rows[-1], flush=True)
    if args.full_run:
        sizes = [int(v) for v in str(args.full_store_rows).split(",")]
        url = ",".join(ensure_store(directory, n) for n in sizes)
        for variant in args.variants.split(","):
            for batch in (256,):
                result = run_child("--measure-full", url, str(args.epochs), args.device, variant,
                                   str(batch))
                rows.append({"what": f"train_head {result['epochs']} epochs, batch {batch}, "
                                     f"{' + '.join(f'{n:,}' for n in sizes)}-row store(s), "
                                     f"{args.device}, {variant}",
                             **result})
                print(rows[-1], flush=True)
    header = f"bench_train on {machine()}"
    save_results(args.out, rows, header, vars(args), plot_column="peak_rss_mb")
    print(table(rows, header))


if __name__ == "__main__":
    main()
