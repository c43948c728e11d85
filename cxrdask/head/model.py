"""The diagnosis head (the 2018 architecture) and its checkpoint file.

A checkpoint is one small ``.pt`` file: the head's weights, the training config, the label
names, the input encoding and the feature store's provenance (backbone and weights
identity, preprocessing), so predictions can refuse a backbone that does not match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cxrdask.archive.labels import LABELS
from cxrdask.errors import CheckpointMismatchError, CheckpointNotFoundError

CHECKPOINT_FORMAT = "cxrdask-head"
CHECKPOINT_VERSION = 1


class DiagnosisHead(nn.Module):
    """Linear(in,128)-ReLU-Linear(128,32)-ReLU-Linear(32,findings) on logits (sigmoid for
    probabilities): 14 findings on NIH's archive, as many as the store has on another.

    ``input_mean`` and ``input_scale`` are fixed buffers (not trained) that standardise the
    inputs with training-split statistics; identity by default, as in the 2018 recipe.
    Random-weight or unfamiliar features (values up to ~100) otherwise kill the ReLUs.
    """

    input_mean: torch.Tensor
    input_scale: torch.Tensor

    def __init__(self, n_inputs: int = 2050, n_labels: int = len(LABELS)):  # NIH's 14 by default
        super().__init__()
        self.n_inputs = n_inputs
        self.register_buffer("input_mean", torch.zeros(n_inputs))
        self.register_buffer("input_scale", torch.ones(n_inputs))
        self.layers = nn.Sequential(
            nn.Linear(n_inputs, 128), nn.ReLU(),
            nn.Linear(128, 32), nn.ReLU(),
            nn.Linear(32, n_labels),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers((inputs - self.input_mean) * self.input_scale)

    def set_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise inputs to zero mean, unit variance (constant columns are left unscaled)."""
        self.input_mean.copy_(mean)
        self.input_scale.copy_(torch.where(std > 1e-6, 1.0 / std, torch.ones_like(std)))

    def probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(inputs))


def new_head(n_inputs: int, seed: int, n_labels: int = len(LABELS)) -> DiagnosisHead:
    """A freshly initialised head; the same seed gives the same weights (the untrained baseline)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiagnosisHead(n_inputs, n_labels)


@dataclass
class Checkpoint:
    """A loaded head checkpoint: the model and everything needed to use it correctly."""

    head: DiagnosisHead
    config: dict[str, Any]
    input: dict[str, Any]
    provenance: dict[str, Any]
    epoch: int
    val_loss: float
    path: str = ""
    label_names: tuple[str, ...] = LABELS

    @property
    def backbone(self) -> dict[str, Any]:
        return self.provenance["backbone"]

    def check_inputs(self, n_inputs: int, backbone: dict[str, Any] | None = None,
                     preprocessing: dict[str, Any] | None = None) -> None:
        """Refuse features from another backbone or weights, or from images prepared otherwise
        (:meth:`check_features`), then inputs of another width.

        The backbone and the preprocessing are checked first: a head of another backbone
        is named as such, not as a width mismatch."""
        self.check_features(backbone, preprocessing)
        if n_inputs != self.input["n_inputs"]:
            raise CheckpointMismatchError(
                f"{self._name} takes {self.input['n_inputs']} inputs "
                f"({self.input['feature_dim']} features + {list(self.input['demographics'])}), "
                f"got {n_inputs}"
            )

    @property
    def _name(self) -> str:
        return f"head {self.path}" if self.path else "the head"

    def check_features(self, backbone: dict[str, Any] | None,
                       preprocessing: dict[str, Any] | None = None) -> None:
        """Refuse features of another backbone or weights (naming both), or of images
        prepared otherwise: another size, normalisation or channel fill (naming each)."""
        head = self._name
        if backbone is not None:
            mine = {k: self.backbone.get(k) for k in ("name", "weights", "sha256")}
            theirs = {k: backbone.get(k) for k in ("name", "weights", "sha256")}
            if mine != theirs:
                raise CheckpointMismatchError(
                    f"{head} was trained on features of {_backbone_name(mine)}, and these are "
                    f"features of {_backbone_name(theirs)}; extract features with the head's "
                    "backbone, or train a head on these")
        if preprocessing is not None:
            trained = self.provenance.get("preprocessing") or {}
            differences = [f"{key} {trained.get(key)!r} there, {preprocessing.get(key)!r} here"
                           for key in FEATURE_PREPROCESSING
                           if key in trained and _plain(trained.get(key)) != _plain(preprocessing.get(key))]
            if differences:
                raise CheckpointMismatchError(
                    f"{head} was trained on features of images prepared otherwise ("
                    + "; ".join(differences) + "): a store made at one image size or "
                    "normalisation is never read with a head of another; extract features as "
                    "the head's were, or train a head on these")


# The preprocessing settings that change a backbone's features (the training flip does not:
# it applies to training rows only; the resize method differs by about one gray level).
FEATURE_PREPROCESSING = ("size", "mean", "std", "channels", "crop", "crop_fraction")


def _backbone_name(identity: dict[str, Any]) -> str:
    sha = identity.get("sha256")
    return f"{identity.get('name')} ({identity.get('weights')}" + (f", sha256 {sha[:12]}…)" if sha else ")")


def _plain(value: Any) -> Any:
    """Lists and tuples alike (JSON keeps tuples as lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: str, head: DiagnosisHead, *, config: dict, input_spec: dict,
                    provenance: dict, epoch: int, val_loss: float,
                    label_names: tuple[str, ...] | list[str] = LABELS) -> None:
    """Write the checkpoint atomically (temp file, then rename): a crash never leaves half a file."""
    from cxrdask import __version__

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "library_version": __version__,
        "state_dict": {key: value.detach().cpu() for key, value in head.state_dict().items()},
        "config": config,
        "label_names": list(label_names),
        "input": input_spec,
        "provenance": provenance,
        "epoch": int(epoch),
        "val_loss": float(val_loss),
    }
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> Checkpoint:
    """Load a head checkpoint (tensors and plain values only: ``weights_only=True``)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(f"no head checkpoint at {path}") from exc
    except Exception as exc:  # not a torch file; torch's advice (weights_only=False) is unsafe
        raise CheckpointMismatchError(
            f"{path} is not a cxrdask head checkpoint (not a PyTorch file of tensors and plain "
            f"values: {type(exc).__name__}); `cxrdask info {path}` says what it is") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(f"{path} is not a cxrdask head checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointMismatchError(
            f"{path} is a head checkpoint of version {payload.get('version')}; "
            f"this library reads version {CHECKPOINT_VERSION}")
    names = tuple(str(n) for n in payload["label_names"])
    head = DiagnosisHead(int(payload["input"]["n_inputs"]), len(names))
    try:
        head.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"{path}: its weights do not fit a head of "
                                      f"{len(names)} findings: {exc}") from None
    head.eval()
    return Checkpoint(head=head, config=payload["config"], input=payload["input"],
                      provenance=payload["provenance"], epoch=payload["epoch"],
                      val_loss=payload["val_loss"], path=str(path), label_names=names)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "FEATURE_PREPROCESSING",
    "Checkpoint",
    "DiagnosisHead",
    "load_checkpoint",
    "new_head",
    "save_checkpoint",
]
