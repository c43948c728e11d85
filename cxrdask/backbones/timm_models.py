"""timm's networks as cxrdask backbones: CNNs (``timm:convnext_tiny``,
``timm:efficientnet_b0``) and vision transformers (``timm:vit_small_patch16_224``,
``timm:vit_base_patch14_dinov2``), through the ``timm`` package (``pip install 'cxrdask[timm]'``).

Features are the network's own pooled pre-logits (``num_classes=0``: its ``forward_head``
with ``pre_logits``; for ConvNeXt the pooled maps after its LayerNorm, for a ViT its class
token or token mean, as its ``global_pool`` says, after its ``fc_norm``). Its preprocessing
comes from timm's data config: the input size, its mean and std, and its centre crop
(``crop_pct``) as :class:`~cxrdask.imaging.preprocessing.Preprocessing`'s
``crop_fraction``; gray is repeated to three channels; images are resized with cxrdask's
antialiased bilinear, not timm's bicubic. A ViT takes its own input size only (its position
embeddings are made for it). Grad-CAM weighs a CNN's last maps, and a ViT's tokens at its
last block's first norm (:attr:`TimmFeatures.cam_layer`). Weights are timm's published ones
(from the Hugging Face Hub into its cache on first use), a local file (``--weights FILE``,
loaded by timm), or random.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import nn

from cxrdask.errors import MissingExtraError, OptionError, WeightsUnavailableError


class TimmFeatures(nn.Module):
    """A timm network without its classifier: ``forward`` gives its pooled features,
    ``maps`` its last feature maps, ``finish`` the features from the maps' spatial mean
    (its head after the pooling: ConvNeXt's norm; nothing for a ResNet)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network: Any = network  # timm's forward_features / forward_head, untyped

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(x)

    def finish(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.network.forward_head(pooled[..., None, None], pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward_head(self.network.forward_features(x), pre_logits=True)

    @property
    def cam_layer(self) -> nn.Module | None:
        """A vision transformer's last block's first norm (tokens, what Grad-CAM weighs for
        it); None for a CNN, whose maps Grad-CAM weighs."""
        blocks = getattr(self.network, "blocks", None)
        return blocks[-1].norm1 if blocks is not None and hasattr(blocks[-1], "norm1") else None


def _timm():
    try:
        import timm
    except ImportError:
        raise MissingExtraError("timm backbones need the timm package: pip install "
                                "'cxrdask[timm]'") from None
    return timm


def _architecture(name: str) -> str:
    return name.removeprefix("timm:")


def _create(name: str, **kwargs) -> nn.Module:
    try:
        return _timm().create_model(_architecture(name), num_classes=0, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
            raise OptionError(f"timm has no model {_architecture(name)!r}: "
                              "timm.list_models() lists them") from None
        raise


@functools.cache
def timm_facts(name: str) -> dict:
    """The feature width, the preprocessing (timm's data config), the weights' Hub
    repository of a timm network, and whether its features come from tokens (a vision
    transformer) rather than maps."""
    from timm.data import resolve_data_config

    network: Any = _create(name, pretrained=False).eval()  # timm's attributes, untyped
    config = resolve_data_config({}, model=network)
    size = int(config["input_size"][-1])
    with torch.inference_mode():
        maps = network.forward_features(torch.zeros(1, 3, size, size))
    tokens = maps.ndim == 3
    if tokens and TimmFeatures(network).cam_layer is None:
        raise OptionError(f"{name} gives tokens but has no blocks[-1].norm1 for Grad-CAM: "
                          "cxrdask takes timm's CNNs and ViT-style transformers")
    return {"feature_dim": int(network.num_features), "tokens": tokens,
            "hf_hub_id": network.pretrained_cfg.get("hf_hub_id") or _architecture(name),
            "preprocessing": {"size": size, "mean": tuple(config["mean"]),
                              "std": tuple(config["std"]), "channels": "gray-repeated-3",
                              "crop": "centre", "crop_fraction": float(config["crop_pct"])}}


def timm_weights_cached(name: str) -> tuple[str, str | None]:
    """The Hub repository of a timm network's published weights, and the Hub cache folder
    when they are not in it yet (None: cached; a run needs no network)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    repository = timm_facts(name)["hf_hub_id"]
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repository, filename), str):
            return repository, None
    return repository, HF_HUB_CACHE


def build_timm(spec) -> nn.Module:
    """The network of a ``timm:`` spec with its weights, as :class:`TimmFeatures`."""
    if spec.kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            network = _create(spec.name, pretrained=False)
    else:
        overlay = {"file": spec.weights} if spec.kind == "file" else None
        if overlay and not os.path.exists(spec.weights):
            from cxrdask.errors import WeightsNotFoundError

            raise WeightsNotFoundError(f"weights file not found: {spec.weights}")
        try:
            network = _create(spec.name, pretrained=True, pretrained_cfg_overlay=overlay)
        except (OSError, RuntimeError, ValueError) as exc:
            raise WeightsUnavailableError(f"could not load {spec.name}'s weights: {exc}") from exc
    return TimmFeatures(network)


__all__ = ["TimmFeatures", "build_timm", "timm_facts", "timm_weights_cached"]
