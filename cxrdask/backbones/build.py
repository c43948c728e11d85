"""A backbone's network with its weights: built on the CPU, frozen, without its classifier.

The networks are torchvision's, built by :mod:`cxrdask.backbones.networks` from torch alone
(a worker does not import torchvision). Weights are ``"imagenet"`` (torchvision's published
weights, downloaded into the torch cache when online), an enum name such as
``"IMAGENET1K_V2"``, a local or fsspec ``.pth`` file (identified by its sha256), or
``"random"`` with a seed (what tests use). Every engine starts from this module's network.
"""

from __future__ import annotations

import os
import urllib.error

import fsspec
import torch
from torch import nn

from cxrdask.backbones.networks import build_network, current_state_keys
from cxrdask.backbones.spec import BackboneSpec, _enum_name, torchvision_weights_file
from cxrdask.errors import WeightsNotFoundError, WeightsUnavailableError


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """Build the frozen, eval-mode network of ``spec`` on the CPU; output is ``(B, feature_dim)``."""
    if spec.is_xrv:
        from cxrdask.backbones.xrv import build_xrv

        return _frozen(build_xrv(spec))
    if spec.is_hf:
        from cxrdask.backbones.hf_models import build_hf

        return _frozen(build_hf(spec))
    if spec.is_timm:
        from cxrdask.backbones.timm_models import build_timm

        return _frozen(build_timm(spec))
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(spec.seed)  # the "random" weights; loaded weights replace them
        model = build_network(spec.name)
    if spec.kind == "torchvision":
        model.load_state_dict(current_state_keys(_torchvision_state(spec)))
    elif spec.kind == "file":
        _load_state_file(model, spec)
    _drop_classifier(model, spec.name)
    return _frozen(model)


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _torchvision_state(spec: BackboneSpec) -> dict:
    """torchvision's published weights of ``spec``, from the torch hub cache, downloaded there
    (and their hash checked) when not yet cached, as torchvision itself does."""
    url, cache = torchvision_weights_file(spec)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True,
                                                  weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"could not load {_enum_name(spec)} for {spec.name}: {exc}. It is downloaded "
            f"from {url} into {os.path.dirname(cache)}; offline, copy that file there, or pass "
            f"a local file with --weights /path/to/{spec.name}.pth"
        ) from exc


def _drop_classifier(model: nn.Module, name: str) -> None:
    if name.startswith("resnet"):
        model.fc = nn.Identity()
    elif name.startswith("densenet"):
        model.classifier = nn.Identity()


def _load_state_file(model: nn.Module, spec: BackboneSpec) -> None:
    try:
        with fsspec.open(spec.weights, "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"weights file not found: {spec.weights}") from exc
    except Exception as exc:  # a pickle of something else, a truncated file, ...
        raise WeightsUnavailableError(f"{spec.weights} is not a state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{spec.weights} holds a {type(state).__name__}, not a state dict")
    state = current_state_keys({key.removeprefix("module."): value for key, value in state.items()})
    classifier = ("fc.", "classifier.")
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes: another architecture's file
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsUnavailableError(f"{spec.weights} does not fit {spec.name}: {first}") from exc
    missing = [k for k in result.missing_keys if not k.startswith(classifier)]
    if missing or result.unexpected_keys:
        raise WeightsUnavailableError(
            f"{spec.weights} does not fit {spec.name}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


__all__ = ["build_backbone"]
