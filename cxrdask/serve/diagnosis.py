"""One image in, the head's probability of each of its findings and a Grad-CAM heatmap per
finding out (the web page, and localisation against NIH's boxes).

The backbone and head are loaded once and shared by all requests; a semaphore bounds how
many images are computed at once (each already uses every core through PyTorch).
Grad-CAM (Selvaraju et al. 2017) is taken on the backbone's last convolutional block
*through the head*: the weight of each feature map is the gradient of the disease's logit
with respect to that map, averaged over its cells.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cxrdask.backbones.build import build_backbone
from cxrdask.backbones.hardware import resolve_device
from cxrdask.backbones.spec import BackboneSpec, file_sha256
from cxrdask.head.model import Checkpoint, load_checkpoint
from cxrdask.imaging.decode import DEFAULT_MAX_PIXELS, decode_gray, to_model_input
from cxrdask.imaging.dicom import ANY_MODALITY, PROJECTION_MODALITIES, Modalities, check_modalities
from cxrdask.serve.inference import backbone_for_checkpoint, head_inputs, inference_preprocessing

DISCLAIMER = ("Research tool, not a medical device: its output must not be used for "
              "diagnosis or treatment.")


@dataclass
class Diagnosis:
    """What the model says of one image."""

    probabilities: dict[str, float]
    heatmaps: dict[str, list[list[float]]] | None
    width: int
    height: int
    note: str | None
    timing_ms: dict[str, float]
    features: np.ndarray | None = None  # the backbone's features, as a store holds them

    def ranking(self) -> list[dict]:
        """Diseases by decreasing probability."""
        ordered = sorted(self.probabilities.items(), key=lambda item: -item[1])
        return [{"label": label, "probability": p} for label, p in ordered]


def last_conv_maps(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of the backbone's last convolutional block, ``(B, C, h, w)``."""
    net: Any = model  # cxrdask.backbones.networks' ResNet / DenseNet: parts typed as Module | Tensor
    if hasattr(net, "maps"):  # a torchxrayvision network (cxrdask.backbones.xrv.XrvFeatures)
        return net.maps(x)
    if name.startswith("resnet"):
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))
    if name.startswith("densenet"):
        return F.relu(net.features(x))
    raise ValueError(f"no Grad-CAM layer known for backbone {name!r}")


def grad_cam(maps: torch.Tensor, logits_of_pooled) -> torch.Tensor:
    """Grad-CAM of every output at once: ``(n_outputs, h, w)``, each scaled to [0, 1].

    ``maps`` is one image's ``(C, h, w)``; ``logits_of_pooled`` maps the pooled ``(C,)``
    features to the logits. Because pooling is a mean, the spatially averaged gradient of a
    logit with respect to the maps is its gradient with respect to the pooled features / (h w).
    """
    pooled = maps.mean(dim=(1, 2))
    jacobian = torch.autograd.functional.jacobian(logits_of_pooled, pooled)  # (n_outputs, C)
    weights = jacobian / (maps.shape[1] * maps.shape[2])
    cams = F.relu(torch.einsum("oc,chw->ohw", weights, maps))
    peak = cams.flatten(1).amax(dim=1).clamp_min(1e-12)
    return cams / peak[:, None, None]


def layer_grad_cam(backbone: nn.Module, layer: nn.Module, x: torch.Tensor,
                   logits_of_features) -> tuple[torch.Tensor, torch.Tensor]:
    """The features of one image and the Grad-CAM of every output at ``layer``: ``(D,)``
    and ``(n_outputs, h, w)``, each map scaled to [0, 1].

    For a transformer, ``layer`` is its last block's first norm: its output ``(1, L, C)``
    holds the class token and the patch tokens the last attention mixes into it, and its
    patch tokens are reshaped to the patch grid (``L`` less the class and register tokens is
    a square), as ``grad-cam``'s ``reshape_transform`` does for a ViT; a CNN's last stage
    gives maps ``(1, C, h, w)`` directly. Each channel is weighed by its gradient averaged
    over the grid (Selvaraju et al. 2017). The backbone runs once; only the layers after
    ``layer`` are differentiated, once per output.
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        captured["activations"] = output = output.detach().requires_grad_(True)
        return output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            features = backbone(x)[0]
            logits = logits_of_features(features)
            activations = captured["activations"]
            grads = torch.stack([torch.autograd.grad(logit, activations, retain_graph=True)[0][0]
                                 for logit in logits])
    finally:
        handle.remove()
    activations = activations.detach()[0]
    if activations.ndim == 2:  # tokens (L, C): the patch grid's, as maps (C, side, side)
        side = math.isqrt(activations.shape[0])
        prefix = activations.shape[0] - side * side  # the class token and registers
        activations = activations[prefix:].T.reshape(-1, side, side)
        grads = grads[:, prefix:].transpose(1, 2).reshape(len(grads), -1, side, side)
    weights = grads.mean(dim=(2, 3))  # (n_outputs, C)
    cams = F.relu(torch.einsum("oc,chw->ohw", weights, activations))
    peak = cams.flatten(1).amax(dim=1).clamp_min(1e-12)
    return features.detach(), cams / peak[:, None, None]


class Diagnoser:
    """A head checkpoint and its backbone, loaded once, answering for one image at a time."""

    def __init__(self, checkpoint: Checkpoint, spec: BackboneSpec, backbone: nn.Module,
                 device: torch.device, *, max_concurrent: int = 1,
                 max_pixels: int = DEFAULT_MAX_PIXELS, head_sha256: str | None = None,
                 modalities: Modalities = PROJECTION_MODALITIES):
        self.checkpoint = checkpoint
        self.spec = spec
        self.device = device
        self.backbone = backbone
        self.head = checkpoint.head.to(device)
        self.preprocessing = inference_preprocessing(checkpoint)
        self.max_pixels = max_pixels
        self.modalities = check_modalities(modalities) or ANY_MODALITY
        self._slots = threading.BoundedSemaphore(max_concurrent)
        path = checkpoint.path
        self.identity = {
            "backbone": spec.identity(),
            "head": {"file": os.path.basename(path), "sha256": head_sha256,
                     "epoch": checkpoint.epoch, "val_loss": checkpoint.val_loss,
                     "inputs": checkpoint.input["n_inputs"]},
            "device": str(device),
        }

    @classmethod
    def load(cls, checkpoint: str | Checkpoint, weights: str | None = None,
             device: str = "auto", max_concurrent: int = 1,
             max_pixels: int = DEFAULT_MAX_PIXELS,
             modalities: Modalities = PROJECTION_MODALITIES) -> Diagnoser:
        """Load the head checkpoint (a file or loaded) and build its backbone on ``device``
        (``weights``: the backbone's weights file, when the head was trained on one;
        ``modalities``: the DICOM modalities answered, CR and DX by default)."""
        loaded = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        spec = backbone_for_checkpoint(loaded, weights)
        resolved = resolve_device(device)
        return cls(loaded, spec, build_backbone(spec).to(resolved), resolved,
                   max_concurrent=max_concurrent, max_pixels=max_pixels, modalities=modalities,
                   head_sha256=file_sha256(loaded.path) if loaded.path else None)

    def _demographics(self, age, sex, view) -> torch.Tensor:
        """The head's inputs after the features (age, sex, view), as the head was trained."""
        features = np.zeros((1, self.spec.feature_dim), np.float32)
        return torch.from_numpy(
            head_inputs(self.checkpoint, features, age, sex, view)[0, features.shape[1]:]
        ).to(self.device)

    def _maps(self, x: torch.Tensor, demographics: torch.Tensor, heatmaps: bool) -> tuple:
        """Features, probabilities, Grad-CAMs and when the backbone finished, for a CNN: its
        last maps computed once and mean-pooled, each output's Grad-CAM from the head's
        Jacobian (:func:`grad_cam`)."""
        with torch.no_grad():  # not inference_mode: Grad-CAM differentiates through the maps
            maps = last_conv_maps(self.backbone, self.spec.name, x)[0]
        forward = time.perf_counter()
        pooled = maps.mean(dim=(1, 2))  # the spatial mean of the last maps
        finish = getattr(self.backbone, "finish", None)  # a timm network's head after it

        def logits_of_pooled(pooled: torch.Tensor) -> torch.Tensor:
            kept = pooled if finish is None else finish(pooled[None])[0]  # the store's features
            return self.head(torch.cat([kept, demographics])[None])[0]

        with torch.no_grad():
            features = pooled if finish is None else finish(pooled[None])[0]
            probabilities = torch.sigmoid(logits_of_pooled(pooled))
        cams = None
        if heatmaps:
            with torch.enable_grad():
                cams = grad_cam(maps, logits_of_pooled)
        return features, probabilities, cams, forward

    def _tokens(self, x: torch.Tensor, demographics: torch.Tensor, heatmaps: bool) -> tuple:
        """Features, probabilities, Grad-CAMs (at its patch grid, :func:`layer_grad_cam`) and
        when the backbone finished, for a transformer."""
        def logits_of_features(features: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([features, demographics])[None])[0]

        if heatmaps:  # one forward; its time counts Grad-CAM's gradients through the last block
            layer: nn.Module = getattr(self.backbone, "cam_layer")  # noqa: B009 (HfFeatures, TimmFeatures)
            features, cams = layer_grad_cam(self.backbone, layer, x, logits_of_features)
        else:
            with torch.no_grad():
                features, cams = self.backbone(x)[0], None
        forward = time.perf_counter()
        with torch.no_grad():
            return features, torch.sigmoid(logits_of_features(features)), cams, forward

    def diagnose(self, data: bytes, name: str = "upload", *, age: float | None = None,
                 sex: str | None = None, view: str | None = None, heatmaps: bool = True
                 ) -> Diagnosis:
        """Probabilities (and heatmaps) for one image's bytes; ImageDecodeError if it is not one."""
        started = time.perf_counter()
        gray, note = decode_gray(data, name, self.max_pixels, self.modalities)
        width, height = gray.size
        array = to_model_input(gray, self.preprocessing)
        decoded = time.perf_counter()
        with self._slots:
            queued = time.perf_counter()
            x = torch.from_numpy(array[None]).to(self.device)
            compute = self._tokens if getattr(self.backbone, "cam_layer", None) else self._maps
            features, probabilities, cams, forward = compute(
                x, self._demographics(age, sex, view), heatmaps)
            done = time.perf_counter()
        timing = {"decode": decoded - started, "queue": queued - decoded,
                  "backbone": forward - queued, "head_and_gradcam": done - forward,
                  "total": done - started}
        names = self.checkpoint.label_names
        return Diagnosis(
            probabilities={label: float(p)
                           for label, p in zip(names, probabilities.tolist(), strict=True)},
            heatmaps=None if cams is None else {
                label: np.round(cam, 4).tolist()
                for label, cam in zip(names, cams.cpu().numpy(), strict=True)},
            width=width, height=height, note=note,
            timing_ms={k: round(v * 1000, 1) for k, v in timing.items()},
            features=features.detach().cpu().numpy())


__all__ = ["DISCLAIMER", "Diagnoser", "Diagnosis", "grad_cam", "last_conv_maps", "layer_grad_cam"]
