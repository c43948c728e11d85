"""Which backbone and weights a run uses, and whether those weights can be had: torch-free.

The client plans a run, checks its weights and records their identity without importing
torch (seconds of a cold start). torchvision's published weights are named and found here
from :data:`TORCHVISION_WEIGHTS`, so neither the client nor a worker imports torchvision
(1.5 s a process) to use them. Building and running the network is :mod:`cxrdask.backbones.runner`.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import urllib.parse
from dataclasses import dataclass

import fsspec

from cxrdask.errors import OptionError, WeightsNotFoundError, WeightsUnavailableError

FEATURE_DIMS = {"resnet50": 2048, "resnet18": 512, "densenet121": 1024}
IMAGENET_DEFAULT = {"resnet50": "IMAGENET1K_V1", "resnet18": "IMAGENET1K_V1",
                    "densenet121": "IMAGENET1K_V1"}
PRECISIONS = ("fp32", "bf16", "fp16")

# torchvision's weights for each network: its enum class, and each member's download URL
# (torchvision 0.15 to today; tests/test_backbone_store.py checks them against torchvision).
TORCHVISION_WEIGHTS: dict[str, tuple[str, dict[str, str]]] = {
    "resnet50": ("ResNet50_Weights", {
        "IMAGENET1K_V1": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "IMAGENET1K_V2": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        "DEFAULT": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"}),
    "resnet18": ("ResNet18_Weights", {
        "IMAGENET1K_V1": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "DEFAULT": "https://download.pytorch.org/models/resnet18-f37072fd.pth"}),
    "densenet121": ("DenseNet121_Weights", {
        "IMAGENET1K_V1": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
        "DEFAULT": "https://download.pytorch.org/models/densenet121-a639ec97.pth"}),
}
# torchvision weight enum names (IMAGENET1K_V2); a path such as /DATA/W.PTH is a file.
_ENUM_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
# How long the check before a run waits for the weights' download server.
REACHABILITY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BackboneSpec:
    """Which network and weights; small and picklable, so tasks carry it instead of a model.

    Attributes
    ----------
    name : str
        ``resnet50``, ``resnet18`` or ``densenet121``.
    weights : str
        ``imagenet``, a torchvision enum name (``IMAGENET1K_V2``), a ``.pth`` file (any fsspec
        URL; identified by its sha256), or ``random``.
    seed : int
        Seed of ``random`` weights.
    """

    name: str = "resnet50"
    weights: str = "imagenet"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in FEATURE_DIMS:
            raise OptionError(f"unknown backbone {self.name!r}; use one of {', '.join(FEATURE_DIMS)}")

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIMS[self.name]

    @property
    def kind(self) -> str:
        """``random``, ``torchvision`` (an enum) or ``file``."""
        if self.weights in (None, "random", "none"):
            return "random"
        if self.weights == "imagenet" or _ENUM_NAME.fullmatch(self.weights):
            return "torchvision"
        return "file"

    def identity(self) -> dict:
        """What identifies the features this spec produces (stored as provenance)."""
        kind = self.kind
        identity = {"name": self.name, "feature_dim": self.feature_dim, "kind": kind}
        if kind == "random":
            identity["weights"] = f"random, seed {self.seed}"
        elif kind == "torchvision":
            identity["weights"] = _enum_name(self)
        else:
            identity["weights"] = os.path.basename(self.weights)
            identity["sha256"] = file_sha256(self.weights)
        return identity


def file_sha256(url: str) -> str:
    """sha256 of a weights file at any fsspec URL, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with fsspec.open(url, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError as exc:
        raise WeightsNotFoundError(f"weights file not found: {url}") from exc
    return digest.hexdigest()


def _enum_name(spec: BackboneSpec) -> str:
    """``ResNet50_Weights.IMAGENET1K_V1``: the torchvision weights ``spec`` names (its identity)."""
    name = IMAGENET_DEFAULT[spec.name] if spec.weights == "imagenet" else spec.weights
    enum, members = TORCHVISION_WEIGHTS[spec.name]
    if name not in members:
        raise WeightsUnavailableError(
            f"{spec.name} has no torchvision weights {name!r}; known: {', '.join(members)}"
        )
    return f"{enum}.{name}"


def torchvision_weights_file(spec: BackboneSpec) -> tuple[str, str]:
    """``(url, cached path)`` of a torchvision weights enum: where torchvision fetches it from
    and where it keeps it (``$TORCH_HOME/hub/checkpoints``, what ``torch.hub`` reads)."""
    url = TORCHVISION_WEIGHTS[spec.name][1][_enum_name(spec).split(".", 1)[1]]
    return url, os.path.join(_torch_hub_dir(), "checkpoints", os.path.basename(url))


def _torch_hub_dir() -> str:
    """``torch.hub.get_dir()``, without importing torch where it is not yet imported: then
    ``$TORCH_HOME/hub``, where ``$TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``
    (``~/.cache/torch``)."""
    torch = sys.modules.get("torch")
    if torch is not None:  # it knows a directory set with torch.hub.set_dir
        return torch.hub.get_dir()
    cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch"))),
                        "hub")


def check_weights_available(spec: BackboneSpec) -> None:
    """Fail fast, before any cluster starts, when ``spec``'s weights cannot be had.

    A weights file must exist (its sha256 is taken for the store's provenance anyway);
    torchvision weights must be in the local cache or their server must answer within
    a few seconds. Offline, that is a :class:`WeightsUnavailableError` at once, instead of
    every worker timing out on the download.
    """
    kind = spec.kind
    if kind == "random":
        return
    if kind == "file":
        file_sha256(spec.weights)
        return
    url, cache = torchvision_weights_file(spec)
    if os.path.exists(cache):
        return
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=REACHABILITY_TIMEOUT_S).close()
    except OSError as exc:
        raise WeightsUnavailableError(
            f"{spec.name} weights {_enum_name(spec)} are not in the local cache ({cache}) and "
            f"{host} cannot be reached ({exc}). Copy {os.path.basename(url)} into "
            f"{os.path.dirname(cache)}, pass a local file (--weights /path/to/{spec.name}.pth), "
            "or use --weights random for a dry run"
        ) from exc
