"""Which backbone and weights a run uses, and whether those weights can be had: torch-free.

The client plans a run, checks its weights and records their identity without importing
torch (seconds of a cold start); only torchvision's own weights need torchvision to be named,
and only then is it imported. Building and running the network is :mod:`cxrdask.backbone`.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass

import fsspec

from .errors import OptionError, WeightsNotFoundError, WeightsUnavailableError

FEATURE_DIMS = {"resnet50": 2048, "resnet18": 512, "densenet121": 1024}
IMAGENET_DEFAULT = {"resnet50": "IMAGENET1K_V1", "resnet18": "IMAGENET1K_V1",
                    "densenet121": "IMAGENET1K_V1"}
PRECISIONS = ("fp32", "bf16", "fp16")
ENGINES = ("torch", "onnxruntime")

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
    import torchvision  # only for torchvision's weights: the client stays torch-free otherwise

    name = IMAGENET_DEFAULT[spec.name] if spec.weights == "imagenet" else spec.weights
    enum = torchvision.models.get_model_weights(spec.name)
    if name not in enum.__members__:
        raise WeightsUnavailableError(
            f"{spec.name} has no torchvision weights {name!r}; known: {', '.join(enum.__members__)}"
        )
    return f"{enum.__name__}.{name}"


def torchvision_weights_file(spec: BackboneSpec) -> tuple[str, str]:
    """``(url, cached path)`` of a torchvision weights enum: where torchvision fetches it from
    and where it keeps it (``$TORCH_HOME/hub/checkpoints``)."""
    import torch
    import torchvision

    weights = torchvision.models.get_weight(_enum_name(spec))
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    return weights.url, cache


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
