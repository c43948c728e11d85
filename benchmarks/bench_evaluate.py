"""Time `evaluate` at NIH's size: 95% intervals, subgroups, calibration and a comparison.

A synthetic feature store of ``--rows`` rows (128,000 by default: the patient split puts a
fifth of them, about 25,600, in the test split, the size of NIH's official test list of
25,596 images) and
two heads trained for a few epochs. Each `evaluate` call is timed end to end (the store
read out of core, the validation pass for thresholds, the bootstrap, the report files),
with and without intervals, so the cost of each part shows.

    python -m benchmarks.bench_evaluate                      # 128,000 rows, 1,000 resamples
    python -m benchmarks.bench_evaluate --rows 5000 --smoke  # a quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, peak_rss_mb, save_results, table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--store", help="reuse (or make) the store here")
    parser.add_argument("--smoke", action="store_true", help="write no result files")
    parser.add_argument("--out", default="benchmarks/results/bench_evaluate")
    args = parser.parse_args(argv)

    import torch

    from cxrdask.evaluation.report import evaluate
    from cxrdask.head.train import TrainConfig, train_head
    from cxrdask.store.features import FeatureStore
    from cxrdask.testing import make_feature_store

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    url = args.store or str(work / "store.zarr")
    if not FeatureStore.exists(url):
        started = time.perf_counter()
        make_feature_store(url, args.rows, seed=0, signal=0.3)
        print(f"store of {args.rows} rows made in {time.perf_counter() - started:.0f} s", flush=True)
    heads = []
    for seed in (0, 1):
        result = train_head(url, TrainConfig(epochs=args.epochs, seed=seed), work / f"head{seed}",
                            progress=False)
        heads.append(result.checkpoint)
    rows = []
    for name, kwargs in (("AUC only (no intervals)", {"bootstrap": 0}),
                         (f"+ {args.resamples} patient resamples",
                          {"bootstrap": args.resamples}),
                         ("+ a second head compared",
                          {"bootstrap": args.resamples, "compare_to": heads[1]})):
        started = time.perf_counter()
        report = evaluate(url, heads[0], out_dir=work / "report", **kwargs)
        seconds = time.perf_counter() - started
        rows.append({"what": name, "test images": report.n_rows, "seconds": seconds,
                     "mean AUC": report.mean_auc,
                     "interval": str(report.audit.mean_auc) if report.audit else "",
                     "peak_rss_mb": peak_rss_mb()})
        print(rows[-1], flush=True)
    header = (f"bench_evaluate on {machine()}: {args.rows} rows, "
              f"{rows[0]['test images']} test images, 2 torch threads")
    print(table(rows, header))
    if not args.smoke:
        save_results(args.out, rows, header, vars(args), plot_column="seconds")


if __name__ == "__main__":
    main()
