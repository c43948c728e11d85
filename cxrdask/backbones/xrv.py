"""torchxrayvision's chest X-ray networks as cxrdask backbones (``xrv-densenet121-res224-all``,
``xrv-resnet50-res512-all``, ...), through the ``torchxrayvision`` package
(``pip install 'cxrdask[xrv]'``).

Features are its ``features2``: the last feature maps, ReLU (DenseNet's; ResNet's last
block ends in one), averaged over space: 1,024 for DenseNet-121, 2,048 for ResNet50. Its
networks take one channel scaled to [-1024, 1024] (:data:`~cxrdask.backbones.spec.XRV_PREPROCESSING`).
Weights are its published files, fetched by it into ``~/.torchxrayvision/models_data`` on
first use (checked before a run: offline, the error names the file and where it goes), a
local copy of one (``--weights FILE``; DenseNet files are whole pickled models, so load
only files you trust), or random with a seed (tests).
"""

from __future__ import annotations

from typing import Any

import fsspec
import torch
import torch.nn.functional as F
from torch import nn

from cxrdask.backbones.spec import XRV_BACKBONES, BackboneSpec, xrv_weights_file
from cxrdask.errors import MissingExtraError, WeightsNotFoundError, WeightsUnavailableError


class XrvFeatures(nn.Module):
    """A torchxrayvision network without its classifier: ``forward`` gives ``features2``,
    ``maps`` the feature maps before the pooling (what Grad-CAM weighs)."""

    def __init__(self, network: nn.Module, architecture: str):
        super().__init__()
        self.network = network
        self.architecture = architecture

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        net: Any = self.network  # its parts are typed Module | Tensor
        if self.architecture == "densenet121":
            return F.relu(net.features(x))
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.maps(x), (1, 1)), 1)


def _xrv():
    try:
        import torchxrayvision
    except ImportError:
        raise MissingExtraError("torchxrayvision backbones need the torchxrayvision package: "
                                "pip install 'cxrdask[xrv]'") from None
    return torchxrayvision


def _network(architecture: str) -> nn.Module:
    """torchxrayvision's architecture with its own random initialisation: its DenseNet
    class; for ResNet50 torchvision's network with one input channel, as it builds it."""
    if architecture == "densenet121":
        return _xrv().models.DenseNet(weights=None)
    from cxrdask.backbones.networks import build_network

    network = build_network("resnet50")
    network.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    network.fc = nn.Linear(2048, 18)
    return network


def _state(path: str, spec: BackboneSpec) -> dict:
    """The state dict of a torchxrayvision weights file (a pickled DenseNet, or a ResNet's
    state dict); ``weights_only`` cannot read the former."""
    try:
        with fsspec.open(path, "rb") as handle:
            loaded = torch.load(handle, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"weights file not found: {path}") from exc
    except Exception as exc:
        raise WeightsUnavailableError(f"{path} is not a torchxrayvision weights file for "
                                      f"{spec.name}: {exc}") from exc
    if not isinstance(loaded, nn.Module):
        return loaded
    # The published DenseNets were pickled by an older torch, before modules had this set;
    # torchxrayvision patches it in the same way before it asks for their state dict.
    for module in loaded.modules():
        if not hasattr(module, "_non_persistent_buffers_set"):
            module._non_persistent_buffers_set = set()
    return loaded.state_dict()


def build_xrv(spec: BackboneSpec) -> nn.Module:
    """The network of an ``xrv-`` spec with its weights, as :class:`XrvFeatures`."""
    architecture = XRV_BACKBONES[spec.name][0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        network = _network(architecture)
    if spec.kind != "random":
        path = spec.weights if spec.kind == "file" else _published(spec)
        state = _state(path, spec)
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise WeightsUnavailableError(f"{path} does not fit {spec.name}: {first}") from None
    return XrvFeatures(network, architecture)


def _published(spec: BackboneSpec) -> str:
    """torchxrayvision's file for ``spec``, downloaded by it into its cache when missing."""
    url, cache = xrv_weights_file(spec)
    try:
        return _xrv().models.get_weights(XRV_BACKBONES[spec.name][1])
    except Exception as exc:
        raise WeightsUnavailableError(
            f"could not fetch {spec.name}'s weights: {exc}. Download {url} into {cache}, or "
            f"pass the file with --weights FILE") from exc


__all__ = ["XrvFeatures", "build_xrv"]
