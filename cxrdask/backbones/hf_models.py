"""Hugging Face ``transformers`` vision models as cxrdask backbones (``hf:microsoft/rad-dino``,
``hf:/models/dinov2-small``), through ``AutoModel`` (``pip install 'cxrdask[hf]'``).

Features are the embedding the spec's pooling names, from the model's last hidden state:
its class token (for DINOv2 that is ``pooler_output``, the model card's embedding), the
mean of its patch tokens (the class and register tokens left out), or both side by side;
a model without a class token (Swin, the CNNs ``transformers`` hosts) gives its own
``pooler_output``. Weights load from safetensors only unless ``allow-pickle`` was given,
in float32, with the attention ``transformers`` picks for the model.

:class:`HfFeatures` also names the layer Grad-CAM weighs (:attr:`HfFeatures.cam_layer`):
the last block's first norm, whose output holds every token the last attention mixes
into the class token (the layer ``grad-cam``'s documentation uses for a ViT); for a CNN,
its last stage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cxrdask.backbones.hf_files import (
    HfSource,
    folder_of,
    hf_facts,
    resolved_pooling,
    transformers_module,
    weight_files,
)
from cxrdask.errors import WeightsUnavailableError


class HfFeatures(nn.Module):
    """A ``transformers`` vision model giving ``(B, feature_dim)`` pooled features."""

    def __init__(self, model: nn.Module, pooling: str, prefix_tokens: int):
        super().__init__()
        self.model: Any = model  # transformers' PreTrainedModel: its outputs are untyped
        self.pooling = pooling
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=x)
        hidden = output.last_hidden_state
        if self.prefix_tokens == 0:  # no class token: the model's own pooled output
            return torch.flatten(output.pooler_output, 1)
        cls = hidden[:, 0]
        if self.pooling == "cls":
            return cls
        mean = hidden[:, self.prefix_tokens:].mean(dim=1)
        return mean if self.pooling == "mean" else torch.cat([cls, mean], dim=1)

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose output Grad-CAM weighs: the last transformer block's first norm
        (tokens ``(B, L, C)``), or a CNN's last stage (maps ``(B, C, h, w)``)."""
        return cam_layer(self.model)


def cam_layer(model: nn.Module) -> nn.Module:
    """The last pre-attention norm of a transformer (``norm1``, ``layernorm_before``), or the
    last convolutional stage (``stages.N``, ``layer4``) of a CNN."""
    last = None
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("norm1", "layernorm_before"):
            last = module
    if last is None:
        stages = [module for name, module in model.named_modules()
                  if name.rsplit(".", 2)[-2:-1] == ["stages"] or name.endswith("layer4")]
        last = stages[-1] if stages else None
    if last is None:
        raise ValueError(f"no Grad-CAM layer known for {type(model).__name__}")
    return last


def build_hf(spec: Any) -> HfFeatures:
    """The network of an ``hf:`` spec with its weights (or random ones, seeded), float32."""
    transformers = transformers_module()
    transformers.utils.logging.disable_progress_bar()  # not a bar per worker on its stderr
    allow_pickle = spec.weights == "allow-pickle"
    facts = hf_facts(spec.name)
    folder = folder_of(HfSource.of(spec.name), allow_pickle)
    pooling = resolved_pooling(spec.name, spec.pooling)
    if spec.kind == "random":
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = transformers.AutoModel.from_config(config)
    else:
        weight_files(folder, allow_pickle, spec.name)  # safetensors, or pickles where allowed
        try:
            model = transformers.AutoModel.from_pretrained(
                folder, local_files_only=True, use_safetensors=None if allow_pickle else True,
                dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise WeightsUnavailableError(f"could not load {spec.name}: {exc}") from exc
    return HfFeatures(model.float().eval(), pooling, facts["prefix_tokens"])


__all__ = ["HfFeatures", "build_hf", "cam_layer"]
