"""Where a Hugging Face ``transformers`` backbone's files are, whether they can be had, and
what its own config and image processor say: everything about an ``hf:`` backbone that needs
no network built.

An ``hf:`` backbone is a repository of the Hugging Face Hub (``hf:microsoft/rad-dino``),
read from the Hub's cache (fetched into it once, by the client, where the Hub can be
reached), or a local folder written by ``save_pretrained`` (``hf:/models/rad-dino``): its
``config.json``, its ``preprocessor_config.json`` and its weights. Weights are read from
safetensors files only, unless the user allows pickled ones (``--weights allow-pickle``):
unpickling a ``pytorch_model.bin`` can run any code its author put in it.

What the model's processor does (its resize rule, crop, mean, std, resampling) becomes the
store's :class:`~cxrdask.imaging.preprocessing.Preprocessing`, read through
``transformers.AutoImageProcessor`` so that the processor class's own defaults apply where
the file leaves a key out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from cxrdask.backbones.digest import file_sha256
from cxrdask.errors import MissingExtraError, OptionError, WeightsNotFoundError, WeightsUnavailableError

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
CONFIG_FILES = ("config.json", "preprocessor_config.json")
# The model types whose sequence starts with a class token (then DINOv2's register tokens):
# their embedding is that token; models without one (Swin, the CNNs) give a pooled output.
CLASS_TOKEN_MODELS = frozenset({"dinov2", "dinov2_with_registers", "vit", "deit", "vit_msn",
                                "beit", "data2vec-vision", "dinov3_vit"})
# PIL's resampling filters as processors number them -> cxrdask's interpolations.
_RESAMPLING = {2: "bilinear-antialias", 3: "bicubic-antialias"}
_REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
# Weights values an ``hf:`` backbone takes: its own safetensors (imagenet is the default
# every backbone shares, and means the same), pickled files allowed, or random.
HF_WEIGHTS = ("imagenet", "published", "allow-pickle", "random", "none")


def transformers_module() -> Any:
    """``transformers``, or :class:`MissingExtraError` naming the extra."""
    try:
        import transformers
    except ImportError:
        raise MissingExtraError("hf: backbones need the transformers package: pip install "
                                "'cxrdask[hf]'") from None
    return transformers


@dataclass(frozen=True)
class HfSource:
    """An ``hf:`` backbone's files: a local folder, or a Hub repository."""

    location: str  # the folder's absolute path, or the repository's id

    @property
    def is_folder(self) -> bool:
        return os.path.isabs(self.location)

    @classmethod
    def of(cls, name: str) -> HfSource:
        """The source an ``hf:`` name gives: a folder where one exists, else a repository id."""
        text = name.removeprefix("hf:")
        path = os.path.expanduser(text)
        if os.path.isdir(path):
            return cls(os.path.abspath(path))
        if text.startswith(("/", ".", "~")) or not _REPOSITORY.fullmatch(text):
            raise WeightsNotFoundError(f"{name}: no folder {path} (a save_pretrained folder "
                                       "with config.json, preprocessor_config.json and "
                                       "model.safetensors) and not a Hub repository id")
        return cls(text)


def folder_of(source: HfSource, allow_pickle: bool = False) -> str:
    """A local folder holding the source's files: the folder itself, or the repository's
    snapshot in the Hub's cache, fetched into it first where it is not there yet (the
    client does this once, before the workers start, and they read the cache). Offline
    and not cached: :class:`WeightsUnavailableError` naming the repository and the cache."""
    if source.is_folder:
        return source.location
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    from cxrdask.backbones.reachability import HUB_HOST, unreachable

    patterns = [*CONFIG_FILES, *SAFETENSORS, "model-*.safetensors",
                *((*PICKLED, "pytorch_model-*.bin") if allow_pickle else ())]
    try:
        return snapshot_download(source.location, local_files_only=True, allow_patterns=patterns)
    except Exception:  # not cached yet
        pass
    exc = unreachable(HUB_HOST)
    if exc is not None:
        raise WeightsUnavailableError(
            f"hf:{source.location} is not in the Hugging Face Hub's cache ({HF_HUB_CACHE}) "
            f"and {HUB_HOST} cannot be reached ({exc}). Fetch it where there is a network "
            f"(hf download {source.location}) and copy the cache here, or pass the folder "
            "it was saved to (--backbone hf:/path/to/folder)") from exc
    try:
        return snapshot_download(source.location, allow_patterns=patterns)
    except Exception as exc:
        raise WeightsUnavailableError(f"could not fetch hf:{source.location}: {exc}") from exc


def weight_files(folder: str, allow_pickle: bool, name: str) -> list[str]:
    """The weights files of a model folder, safetensors first; pickled files only where
    allowed (:class:`WeightsUnavailableError` otherwise, saying how to allow them)."""
    for kinds, allowed in ((SAFETENSORS, True), (PICKLED, allow_pickle)):
        single, index = (os.path.join(folder, kind) for kind in kinds)
        if os.path.isfile(single):
            found = [single]
        elif os.path.isfile(index):
            with open(index) as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            found = [os.path.join(folder, shard) for shard in shards]
        else:
            continue
        if not allowed:
            raise WeightsUnavailableError(
                f"{name} holds pickled weights only ({os.path.basename(found[0])}), which can "
                "run code when loaded: convert them to safetensors, or pass --weights "
                "allow-pickle if you trust their source")
        return found
    raise WeightsNotFoundError(f"{name}: {folder} holds no model.safetensors"
                               + (" or pytorch_model.bin" if allow_pickle else ""))


def check_folder(folder: str, name: str) -> None:
    """A model folder must hold its config and its processor's config."""
    missing = [file for file in CONFIG_FILES if not os.path.isfile(os.path.join(folder, file))]
    if missing:
        raise WeightsNotFoundError(f"{name}: {folder} has no {' or '.join(missing)} (what "
                                   "save_pretrained writes for the model and its processor)")


def weights_sha256(files: list[str]) -> str:
    """One sha256 over the weights files in order (one file: that file's sha256)."""
    if len(files) == 1:
        return _file_sha256(files[0], *_stamp(files[0]))
    digest = hashlib.sha256()
    for file in files:
        digest.update(_file_sha256(file, *_stamp(file)).encode())
    return digest.hexdigest()


def _stamp(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """:func:`~cxrdask.backbones.digest.file_sha256`, remembered while the file's size and
    time are unchanged (a ViT-B's 350 MB take a second; a run asks for its identity several
    times)."""
    return file_sha256(path)


@functools.cache
def hf_facts(name: str) -> dict:
    """What the config and processor of ``name`` say: ``model_type``, ``width`` (of one
    token or pooled output), ``class_token`` (whether the sequence starts with one),
    ``prefix_tokens`` (the class token and registers) and ``preprocessing``."""
    source = HfSource.of(name)
    folder = folder_of(source)
    check_folder(folder, name)
    transformers = transformers_module()
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    width = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]
    class_token = config.model_type in CLASS_TOKEN_MODELS
    prefix = (1 + int(getattr(config, "num_register_tokens", 0) or 0)) if class_token else 0
    return {"model_type": config.model_type, "width": int(width), "class_token": class_token,
            "prefix_tokens": prefix, "folder": folder,
            "preprocessing": processor_preprocessing(processor, name)}


def resolved_pooling(name: str, pooling: str) -> str:
    """``auto`` made concrete (the class token where the model has one, else its pooled
    output, ``mean``); a class token asked of a model without one is refused."""
    class_token = hf_facts(name)["class_token"]
    if pooling == "auto":
        return "cls" if class_token else "mean"
    if "cls" in pooling and not class_token:
        raise OptionError(f"{name} ({hf_facts(name)['model_type']}) has no class token: use "
                          "pooling mean (its pooled output) or auto")
    return pooling


def feature_width(name: str, pooling: str) -> int:
    """The store's feature dimension for ``name`` pooled by ``pooling``."""
    width = hf_facts(name)["width"]
    return 2 * width if resolved_pooling(name, pooling) == "cls+mean" else width


def _value(container: Any, key: str) -> Any:
    """A processor's size entry, from a dict or transformers' ``SizeDict``."""
    if container is None:
        return None
    return container.get(key) if isinstance(container, dict) else getattr(container, key, None)


def processor_preprocessing(processor: Any, name: str) -> dict:
    """The processor's resize rule, crop, normalisation and resampling as
    :class:`~cxrdask.imaging.preprocessing.Preprocessing` fields.

    A shortest-edge resize to ``S`` then a centre crop of ``C`` is crop ``shortest-edge``
    with ``crop_fraction = C / S``, the very rule (exact resizing, Pillow's filter);
    ConvNeXt's ``crop_pct`` below 384 is the same rule; a resize to a fixed height and
    width squashes the image. Gray images are repeated to three channels, as
    ``do_convert_rgb`` does.
    """
    size, crop = processor.size, getattr(processor, "crop_size", None)
    do_crop = bool(getattr(processor, "do_center_crop", False))
    shortest = _value(size, "shortest_edge")
    crop_pct = getattr(processor, "crop_pct", None)
    if shortest:
        if crop_pct and shortest < 384:  # ConvNeXt's processor
            side, fraction = int(shortest), float(crop_pct)
        elif do_crop and _value(crop, "height"):
            side = int(_value(crop, "height"))
            fraction = min(1.0, side / shortest)
        else:
            side, fraction = int(shortest), 1.0
        geometry = {"size": side, "crop": "shortest-edge", "crop_fraction": fraction}
    else:
        height, width = _value(size, "height"), _value(size, "width")
        if not height or height != width:
            raise OptionError(f"{name}'s processor resizes to {height}x{width}: cxrdask "
                              "feeds square images")
        geometry = {"size": int(height), "crop": "none", "crop_fraction": 1.0}
    rescale = float(getattr(processor, "rescale_factor", 1 / 255))
    if getattr(processor, "do_rescale", True) and not math.isclose(rescale, 1 / 255, rel_tol=1e-6):
        raise OptionError(f"{name}'s processor rescales by {rescale}, not 1/255")
    resample = int(getattr(processor, "resample", 2) or 2)
    if resample not in _RESAMPLING:
        raise OptionError(f"{name}'s processor resamples with PIL filter {resample}; cxrdask "
                          "resizes with bilinear (2) or bicubic (3)")
    normalise = getattr(processor, "do_normalize", True)
    mean = tuple(float(v) for v in processor.image_mean) if normalise else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in processor.image_std) if normalise else (1.0, 1.0, 1.0)
    return {**geometry, "mean": mean, "std": std, "channels": "gray-repeated-3",
            "interpolation": _RESAMPLING[resample], "reducing_gap": None}


__all__ = ["CLASS_TOKEN_MODELS", "HF_WEIGHTS", "HfSource", "check_folder", "feature_width",
           "folder_of", "hf_facts", "processor_preprocessing", "resolved_pooling",
           "transformers_module", "weight_files", "weights_sha256"]
