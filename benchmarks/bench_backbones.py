"""Backbone families side by side: images/s of each bare network on one CPU thread.

torchvision's ResNet50 (the default), torchxrayvision's DenseNet-121 (224 px, one channel)
and ResNet50 (512 px), and timm CNNs, each on eager PyTorch and on ONNX Runtime (the
default engine for fp32 on CPUs), fp32, batch 8, random weights, random decoded input of
the backbone's own size and channels. Each figure is measured in a fresh process (an
engine's threads outlive it), in alternated rounds (every backbone once per round), and
the median of the rounds is reported.

    python -m benchmarks.bench_backbones --rounds 3 --seconds 10 --out results.csv
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BACKBONES = ("resnet50", "xrv-densenet121-res224-all", "xrv-resnet50-res512-all",
                     "timm:efficientnet_b0", "timm:convnext_tiny")
ENGINES = ("torch", "onnxruntime")


def measure(backbone: str, engine: str, seconds: float, batch: int) -> dict:
    """One figure, in this process: the bare network, one thread, a warm-up call first."""
    import numpy as np
    import torch

    from cxrdask.backbones.runner import BackboneRunner
    from cxrdask.backbones.spec import BackboneSpec

    torch.set_num_threads(1)
    spec = BackboneSpec(backbone, "random", 0)
    size = spec.preprocessing().get("size", 224)
    runner = BackboneRunner.build(spec, "cpu", "fp32", False, batch, engine, threads=1)
    x = np.random.default_rng(0).standard_normal((batch, spec.in_channels, size, size))
    x = x.astype(np.float32)
    batch_input = x if engine == "onnxruntime" else torch.from_numpy(x)
    runner(batch_input)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner(batch_input)
        done += batch
    return {"backbone": backbone, "engine": engine, "size": size,
            "features": spec.feature_dim, "images_per_s": done / (time.perf_counter() - start)}


def measure_in_a_process(backbone: str, engine: str, seconds: float, batch: int) -> dict:
    code = ("import json, sys\nfrom benchmarks.bench_backbones import measure\n"
            f"print(json.dumps(measure({backbone!r}, {engine!r}, {seconds!r}, {batch!r})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(run.stdout.strip().splitlines()[-1])


def run(backbones: list[str], rounds: int, seconds: float, batch: int) -> list[dict]:
    """Medians over alternated rounds of every (backbone, engine)."""
    figures: dict[tuple[str, str], list[dict]] = {}
    for _ in range(rounds):
        for backbone in backbones:
            for engine in ENGINES:
                figure = measure_in_a_process(backbone, engine, seconds, batch)
                figures.setdefault((backbone, engine), []).append(figure)
    rows = []
    for measured in figures.values():
        rates = [f["images_per_s"] for f in measured]
        rows.append({**measured[0], "images_per_s": statistics.median(rates),
                     "rounds": [round(r, 2) for r in rates]})
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import machine, table

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per figure")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", help="CSV of the figures")
    args = parser.parse_args(argv)
    rows = run(args.backbones.split(","), args.rounds, args.seconds, args.batch)
    print(table(rows, f"bare backbone, one CPU thread, fp32, batch {args.batch}: {machine()}"))
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
