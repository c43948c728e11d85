"""Backbone families side by side: images/s of each bare network on one CPU thread.

torchvision's ResNet50 (the default), torchxrayvision's DenseNet-121 (224 px, one channel)
and ResNet50 (512 px), timm CNNs, and vision transformers shaped as the foundation models
researchers use: ``rad-dino-shaped`` (a DINOv2 ViT-B/14 at 518 px with RAD-DINO's
processor, as ``microsoft/rad-dino`` is) and ``dinov2-s14-shaped`` (DINOv2-S/14 at 224),
saved with ``save_pretrained`` and run through ``hf:FOLDER`` as a user's download would be.
Each on every CPU engine (``--engines``: eager PyTorch and ONNX Runtime in fp32, OpenVINO in
fp32 and bf16, eager PyTorch in bf16), batch 8, random weights, random decoded input of the
backbone's own size and channels. Each figure is measured in a fresh process (an engine's
threads outlive it), in alternated rounds (every backbone once per round), and the median
of the rounds is reported.

    python -m benchmarks.bench_backbones --rounds 3 --seconds 10 --out results.csv
    python -m benchmarks.bench_backbones --backbones resnet50,dinov2-s14-shaped,rad-dino-shaped
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BACKBONES = ("resnet50", "xrv-densenet121-res224-all", "xrv-resnet50-res512-all",
                     "timm:efficientnet_b0", "timm:convnext_tiny", "dinov2-s14-shaped",
                     "rad-dino-shaped")
ENGINES = ("torch/fp32", "onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "torch/bf16")
# Transformers shaped as published ones (their configs' sizes), random weights: DINOv2-S/14
# with DINOv2's processor (shorter side 256, centre 224), and RAD-DINO (ViT-B/14 at 518 with
# its own mean and std).
SHAPED = {
    "dinov2-s14-shaped": ({"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536,
                           "num_hidden_layers": 12, "patch_size": 14, "image_size": 518},
                          {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}}),
    "rad-dino-shaped": ({"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
                         "num_hidden_layers": 12, "patch_size": 14, "image_size": 518},
                        {"size": {"shortest_edge": 518}, "crop_size": {"height": 518, "width": 518},
                         "image_mean": [0.5307] * 3, "image_std": [0.2583] * 3}),
}


def shaped_folder(name: str) -> str:
    """``hf:FOLDER`` of a transformer shaped as :data:`SHAPED` says, written once (random
    weights, seed 0) by ``save_pretrained`` with a ``BitImageProcessor``."""
    folder = Path(tempfile.gettempdir()) / "cxrdask-bench-hf" / name
    if not (folder / "preprocessor_config.json").exists():
        import torch
        import transformers

        config, processor = SHAPED[name]
        torch.manual_seed(0)
        transformers.AutoModel.from_config(transformers.Dinov2Config(**config)).save_pretrained(folder)
        transformers.BitImageProcessor(do_center_crop=True, resample=3, **processor).save_pretrained(folder)
    return f"hf:{os.fspath(folder)}"


def measure(backbone: str, engine: str, seconds: float, batch: int) -> dict:
    """One figure, in this process: the bare network, one thread, a warm-up call first.
    ``engine`` is ``ENGINE/PRECISION``."""
    import numpy as np
    import torch

    from cxrdask.backbones.runner import BackboneRunner
    from cxrdask.backbones.spec import BackboneSpec

    torch.set_num_threads(1)
    engine, precision = engine.split("/")
    spec = BackboneSpec(shaped_folder(backbone) if backbone in SHAPED else backbone, "random", 0)
    size = spec.preprocessing().get("size", 224)
    runner = BackboneRunner.build(spec, "cpu", precision, False, batch, engine, threads=1)
    x = np.random.default_rng(0).standard_normal((batch, spec.in_channels, size, size))
    x = x.astype(np.float32)
    batch_input = x if engine != "torch" else torch.from_numpy(x)
    runner.warm((spec.in_channels, size, size))
    runner(batch_input)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        runner(batch_input)
        done += batch
    return {"backbone": backbone, "engine": engine, "precision": precision, "size": size,
            "features": spec.feature_dim, "images_per_s": done / (time.perf_counter() - start)}


def measure_in_a_process(backbone: str, engine: str, seconds: float, batch: int) -> dict:
    code = ("import json, sys\nfrom benchmarks.bench_backbones import measure\n"
            f"print(json.dumps(measure({backbone!r}, {engine!r}, {seconds!r}, {batch!r})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(run.stdout.strip().splitlines()[-1])


def run(backbones: list[str], rounds: int, seconds: float, batch: int,
        engines: list[str]) -> list[dict]:
    """Medians over alternated rounds of every (backbone, engine)."""
    figures: dict[tuple[str, str], list[dict]] = {}
    for _ in range(rounds):
        for backbone in backbones:
            for engine in engines:
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
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="ENGINE/PRECISION pairs (bf16: where the CPU computes it natively)")
    parser.add_argument("--out", help="CSV of the figures")
    args = parser.parse_args(argv)
    rows = run(args.backbones.split(","), args.rounds, args.seconds, args.batch,
               args.engines.split(","))
    print(table(rows, f"bare backbone, one CPU thread, batch {args.batch}: {machine()}"))
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
