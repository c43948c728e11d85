"""Grad-CAM of every finding for one image: cxrdask's against the ``grad-cam`` package's.

Why cxrdask keeps its own Grad-CAM (tests/test_grad_cam_reference.py holds the maps equal):
the web page shows all 14 findings' maps for each upload. cxrdask computes them from one
backbone pass (a CNN: the head's Jacobian at the pooled maps; a transformer: one gradient
per finding through the last block), where ``pytorch_grad_cam.GradCAM`` runs the whole
network forward and backward once per finding. Both are timed here on the same image, the
same random-weight backbone and head, all of this machine's cores, medians of ``--runs``.

    python -m benchmarks.bench_heatmaps --backbones resnet50,dinov2-s14-shaped,rad-dino-shaped
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.bench_backbones import SHAPED, shaped_folder
from benchmarks.common import machine, save_results, table

FINDINGS = 14


def _median_seconds(work, runs: int) -> float:
    work()  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(backbone: str, runs: int) -> dict:
    """Seconds for all findings' maps of one image, both ways."""
    import numpy as np
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torch import nn

    from cxrdask.backbones.build import build_backbone
    from cxrdask.backbones.spec import BackboneSpec
    from cxrdask.serve.diagnosis import grad_cam, last_conv_maps, layer_grad_cam

    spec = BackboneSpec(shaped_folder(backbone) if backbone in SHAPED else backbone, "random")
    network = build_backbone(spec)  # frozen, as the web page holds it

    def trainable(flag: bool) -> None:  # grad-cam needs gradients on; cxrdask runs frozen
        for parameter in network.parameters():
            parameter.requires_grad_(flag)

    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(spec.feature_dim, 128), nn.ReLU(), nn.Linear(128, 32),
                         nn.ReLU(), nn.Linear(32, FINDINGS)).eval()
    size = spec.preprocessing().get("size", 224)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32))
    layer = getattr(network, "cam_layer", None)

    def ours() -> None:
        trainable(False)
        if layer is not None:
            layer_grad_cam(network, layer, x, lambda f: head(f[None])[0])
            return
        with torch.no_grad():
            maps = last_conv_maps(network, spec.name, x)[0]
        with torch.enable_grad():
            grad_cam(maps, lambda pooled: head(pooled[None])[0])

    class Whole(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network, self.head = network, head

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.head(self.network(images))

    def reshape(tensor: torch.Tensor) -> torch.Tensor:  # grad-cam's ViT example, any grid
        side = int((tensor.shape[1] - 1) ** 0.5)
        return tensor[:, 1:].reshape(tensor.size(0), side, side, -1).permute(0, 3, 1, 2)

    target = layer if layer is not None else getattr(network, "layer4", None)
    cam = GradCAM(model=Whole(), target_layers=[target],
                  reshape_transform=reshape if layer is not None else None)

    def theirs() -> None:
        trainable(True)
        for finding in range(FINDINGS):
            cam(input_tensor=x, targets=[ClassifierOutputTarget(finding)])

    mine, package = _median_seconds(ours, runs), _median_seconds(theirs, runs)
    return {"what": backbone, "size": size, "findings": FINDINGS,
            "cxrdask s": round(mine, 3), "grad-cam s": round(package, 3),
            "ratio": round(package / mine, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="resnet50,dinov2-s14-shaped,rad-dino-shaped")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", help="stem of the results (STEM.json, STEM.png)")
    args = parser.parse_args(argv)
    rows = [measure(backbone, args.runs) for backbone in args.backbones.split(",")]
    header = f"Grad-CAM of {FINDINGS} findings, one image: {machine()}"
    print(table(rows, header))
    if args.out:
        save_results(args.out, rows, header, vars(args), plot_column="ratio")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
