"""Which backbone and weights a run uses, and whether those weights can be had: torch-free.

The client plans a run, checks its weights and records their identity without importing
torch (seconds of a cold start). torchvision's published weights are named and found here
from :data:`TORCHVISION_WEIGHTS`, so neither the client nor a worker imports torchvision
(1.5 s a process) to use them. Building and running the network is :mod:`cxrdask.backbones.runner`.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from dataclasses import dataclass

from cxrdask.backbones.digest import file_sha256
from cxrdask.backbones.reachability import HUB_HOST, REACHABILITY_TIMEOUT_S, unreachable
from cxrdask.choices import POOLINGS, XrvBackbone, values_of
from cxrdask.errors import OptionError, WeightsUnavailableError

_XRV_RELEASE = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"
_XRV_DENSENET = "densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
# torchxrayvision's published chest X-ray models (its ``models.model_urls``; a test holds this
# table equal to the installed package's): cxrdask name -> (architecture, torchxrayvision's
# weights name, input side, weights file URL).
XRV_BACKBONES: dict[str, tuple[str, str, int, str]] = {
    **{f"xrv-densenet121-res224-{data}": ("densenet121", f"densenet121-res224-{data}", 224,
                                          f"{_XRV_RELEASE}{file}-{_XRV_DENSENET}")
       for data, file in (("all", "nih-pc-chex-mimic_ch-google-openi-kaggle"), ("nih", "nih"),
                          ("pc", "pc"), ("chex", "chex"), ("rsna", "kaggle"),
                          ("mimic_nb", "mimic_nb"), ("mimic_ch", "mimic_ch"))},
    "xrv-resnet50-res512-all": ("resnet50", "resnet50-res512-all", 512,
                                f"{_XRV_RELEASE}pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"),
}
# The names are cxrdask.choices.XrvBackbone's (what the API's types and --help list).
assert tuple(XRV_BACKBONES) == values_of(XrvBackbone), "XRV_BACKBONES and XrvBackbone differ"
FEATURE_DIMS = {"resnet50": 2048, "resnet18": 512, "densenet121": 1024,
                **{name: 1024 if arch == "densenet121" else 2048
                   for name, (arch, *_) in XRV_BACKBONES.items()}}
# torchxrayvision's preprocessing (its normalize, XRayCenterCrop, XRayResizer): one channel
# scaled to [-1024, 1024] (x / 255 * 2048 - 1024 is (x / 255 - 0.5) / (1 / 2048)), the image
# cropped to its centred square, then resized.
XRV_PREPROCESSING = {"mean": (0.5,), "std": (1 / 2048,), "channels": "gray-1", "crop": "centre"}
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


@dataclass(frozen=True)
class BackboneSpec:
    """Which network and weights; small and picklable, so tasks carry it instead of a model.

    Attributes
    ----------
    name : str
        ``resnet50``, ``resnet18`` or ``densenet121`` (torchvision's ImageNet networks), or
        one of torchxrayvision's chest X-ray models (:data:`XRV_BACKBONES`:
        ``xrv-densenet121-res224-all``, ``xrv-resnet50-res512-all``, ...), or a timm CNN
        (``timm:convnext_tiny``) or vision transformer (``timm:vit_small_patch16_224``), or
        a Hugging Face ``transformers`` vision model (``hf:microsoft/rad-dino``, a Hub
        repository, or ``hf:/models/rad-dino``, a ``save_pretrained`` folder); the last
        three bring their own preprocessing (:meth:`preprocessing`).
    weights : str
        ``imagenet``: the network's published weights (torchvision's ImageNet weights, or
        torchxrayvision's for an ``xrv-`` network); a torchvision enum name
        (``IMAGENET1K_V2``); a weights file (any fsspec URL; identified by its sha256); or
        ``random``. An ``hf:`` model's weights are its own safetensors (``imagenet`` or
        ``published``), its pickled ``pytorch_model.bin`` where allowed (``allow-pickle``),
        or ``random``.
    seed : int
        Seed of ``random`` weights.
    pooling : str
        An ``hf:`` model's embedding: ``cls`` (its class token, DINOv2's ``pooler_output``),
        ``mean`` (the mean of its patch tokens; a model without a class token: its pooled
        output), ``cls+mean`` (both, side by side), or ``auto`` (``cls`` where the model has
        a class token, else ``mean``). Other backbones give their own pooled features.
    """

    name: str = "resnet50"
    weights: str = "imagenet"
    seed: int = 0
    pooling: str = "auto"

    def __post_init__(self) -> None:
        if (self.name not in FEATURE_DIMS and not TIMM_NAME.fullmatch(self.name)
                and not HF_NAME.fullmatch(self.name)):
            raise OptionError(f"unknown backbone {self.name!r}; use one of "
                              f"{', '.join(FEATURE_DIMS)}, timm:MODEL (a timm network), or "
                              "hf:REPOSITORY_OR_FOLDER (a Hugging Face transformers model)")
        if self.pooling not in POOLINGS:
            raise OptionError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        if self.pooling != "auto" and not self.is_hf:
            raise OptionError(f"{self.name} gives its own pooled features: pooling applies to "
                              "hf: backbones")
        if self.is_hf:
            from cxrdask.backbones.hf_files import HF_WEIGHTS, HfSource

            if self.weights not in HF_WEIGHTS:
                raise OptionError(f"{self.name}'s weights are its own: one of "
                                  f"{', '.join(HF_WEIGHTS)}, not {self.weights!r}")
            folder = os.path.expanduser(self.name.removeprefix("hf:"))
            if os.path.isdir(folder):  # recorded absolute, so workers and later steps find it
                object.__setattr__(self, "name", "hf:" + HfSource.of(self.name).location)

    @property
    def feature_dim(self) -> int:
        if self.is_hf:
            from cxrdask.backbones.hf_files import feature_width

            return feature_width(self.name, self.pooling)
        if self.is_timm:
            return timm_facts(self.name)["feature_dim"]
        return FEATURE_DIMS[self.name]

    @property
    def takes_tokens(self) -> bool:
        """A vision transformer (``hf:`` models, timm's ViTs): fixed input size, features
        and Grad-CAM from tokens."""
        return self.is_hf or (self.is_timm and timm_facts(self.name)["tokens"])

    @property
    def is_hf(self) -> bool:
        """A Hugging Face ``transformers`` model (``hf:ID_OR_FOLDER``)."""
        return self.name.startswith("hf:")

    @property
    def is_timm(self) -> bool:
        """A timm network (``timm:convnext_tiny``): its facts are read from timm itself."""
        return self.name.startswith("timm:")

    @property
    def is_xrv(self) -> bool:
        """A torchxrayvision network (one gray channel, its own preprocessing)."""
        return self.name in XRV_BACKBONES

    @property
    def in_channels(self) -> int:
        return 1 if self.is_xrv else 3

    def preprocessing(self) -> dict:
        """What the network's own preprocessing sets (size, normalisation, channels, crop;
        nothing for torchvision's ImageNet networks, which take the store's settings).
        ``fixed_size``: whether another ``image_size`` is refused (torchxrayvision's) or may
        replace the network's default (timm's data config, for a CNN)."""
        if self.is_hf:
            from cxrdask.backbones.hf_files import hf_facts

            return {**hf_facts(self.name)["preprocessing"], "fixed_size": True}
        if self.is_timm:
            facts = timm_facts(self.name)
            return {**facts["preprocessing"], "fixed_size": facts["tokens"]}
        if not self.is_xrv:
            return {}
        return {"size": XRV_BACKBONES[self.name][2], **XRV_PREPROCESSING, "fixed_size": True}

    @property
    def kind(self) -> str:
        """``random``, ``torchvision`` (an enum), ``torchxrayvision`` (its published
        weights), ``timm``, ``hf`` (a transformers model's own weights) or ``file``."""
        if self.weights in (None, "random", "none"):
            return "random"
        if self.is_hf:
            return "hf"
        if self.is_xrv and self.weights in ("imagenet", "published"):
            return "torchxrayvision"
        if self.is_timm and self.weights in ("imagenet", "published"):
            return "timm"
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
        elif kind == "torchxrayvision":
            identity["weights"] = f"torchxrayvision {XRV_BACKBONES[self.name][1]}"
        elif kind == "timm":
            identity["weights"] = f"timm {timm_facts(self.name)['hf_hub_id']}"
        elif kind == "hf":
            identity.update(_hf_weights_identity(self))
        else:
            identity["weights"] = os.path.basename(self.weights)
            identity["sha256"] = file_sha256(self.weights)
        if self.is_hf:
            from cxrdask.backbones.hf_files import resolved_pooling

            identity["pooling"] = resolved_pooling(self.name, self.pooling)
        return identity


def _hf_weights_identity(spec: BackboneSpec) -> dict:
    """An ``hf:`` model's weights as provenance: its source, its weights files and their
    sha256 (a folder's contents can change under the same name)."""
    from cxrdask.backbones.hf_files import HfSource, folder_of, weight_files, weights_sha256

    allow_pickle = spec.weights == "allow-pickle"
    folder = folder_of(HfSource.of(spec.name), allow_pickle)
    files = weight_files(folder, allow_pickle, spec.name)
    return {"weights": ", ".join(os.path.basename(file) for file in files),
            "sha256": weights_sha256(files)}


TIMM_NAME = re.compile(r"timm:[A-Za-z0-9_.\-]+")
HF_NAME = re.compile(r"hf:\S+")


def timm_facts(name: str) -> dict:
    """A timm network's feature width, data config and weights repository, read from timm
    (which imports torch: only a run with a timm backbone pays it)."""
    from cxrdask.backbones.timm_models import timm_facts as facts

    return facts(name)


def xrv_weights_file(spec: BackboneSpec) -> tuple[str, str]:
    """``(url, cached path)`` of torchxrayvision's published weights for ``spec``: where it
    downloads them from and where it keeps them (``~/.torchxrayvision/models_data``)."""
    url = XRV_BACKBONES[spec.name][3]
    folder = os.path.join(os.path.expanduser("~"), ".torchxrayvision", "models_data")
    return url, os.path.join(folder, os.path.basename(url))


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


def _check_timm_weights(name: str) -> None:
    """timm's published weights must be in the Hugging Face Hub's cache, or the Hub
    reachable."""
    from cxrdask.backbones.timm_models import timm_weights_cached

    repository, cache = timm_weights_cached(name)
    exc = None if cache is None else unreachable(HUB_HOST)
    if exc is not None:
        raise WeightsUnavailableError(
            f"{name}'s weights ({repository} on the Hugging Face Hub) are not in the Hub's "
            f"cache ({cache}) and {HUB_HOST} cannot be reached ({exc}). Fetch them where "
            f"there is a network (huggingface-cli download {repository}) and copy the cache "
            "here, pass a local file (--weights model.safetensors), or use --weights random "
            "for a dry run") from exc


def check_weights_available(spec: BackboneSpec) -> None:
    """Fail fast, before any cluster starts, when ``spec``'s weights cannot be had.

    A weights file must exist (its sha256 is taken for the store's provenance anyway);
    torchvision weights must be in the local cache or their server must answer within
    a few seconds. Offline, that is a :class:`WeightsUnavailableError` at once, instead of
    every worker timing out on the download.
    """
    kind = spec.kind
    if spec.is_hf:  # its config, processor and weights, fetched into the Hub's cache if need be
        spec.identity()
        return
    if kind == "random":
        return
    if kind == "file":
        file_sha256(spec.weights)
        return
    if kind == "timm":
        _check_timm_weights(spec.name)
        return
    url, cache = (xrv_weights_file(spec) if kind == "torchxrayvision"
                  else torchvision_weights_file(spec))
    if os.path.exists(cache):
        return
    host = urllib.parse.urlparse(url).hostname or ""
    exc = unreachable(host)
    if exc is not None:
        what = (XRV_BACKBONES[spec.name][1] if kind == "torchxrayvision" else _enum_name(spec))
        raise WeightsUnavailableError(
            f"{spec.name} weights {what} are not in the local cache ({cache}) and "
            f"{host} cannot be reached ({exc}). Copy {os.path.basename(url)} into "
            f"{os.path.dirname(cache)}, pass a local file (--weights /path/to/{spec.name}.pth), "
            "or use --weights random for a dry run"
        ) from exc


__all__ = [
    "FEATURE_DIMS",
    "HF_NAME",
    "HUB_HOST",
    "IMAGENET_DEFAULT",
    "PRECISIONS",
    "REACHABILITY_TIMEOUT_S",
    "TIMM_NAME",
    "TORCHVISION_WEIGHTS",
    "XRV_BACKBONES",
    "XRV_PREPROCESSING",
    "BackboneSpec",
    "check_weights_available",
    "file_sha256",
    "timm_facts",
    "torchvision_weights_file",
    "unreachable",
    "xrv_weights_file",
]
