"""Diagnosis of single images: the backbone a head was trained on, the same preprocessing, the head.

What ``predict``, ``cxrdask predict`` and the web page share. Only torch and
Pillow are needed here (no scikit-learn, no Dask), so a server that diagnoses one image at
a time stays light.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from cxrdask.backbones.runner import BackboneSpec, cached_runner
from cxrdask.errors import CheckpointMismatchError
from cxrdask.head.encoding import head_inputs
from cxrdask.head.model import Checkpoint, load_checkpoint
from cxrdask.imaging.decode import preprocess_bytes
from cxrdask.imaging.preprocessing import Preprocessing


def backbone_for_identity(identity: dict, weights: str | None = None,
                          what: str = "the head was trained on") -> BackboneSpec:
    """The backbone a store's or a head's recorded identity names; a weights file must be
    given where it was one, and must match (its sha256)."""
    pooling = identity.get("pooling", "auto")  # an hf: model's embedding
    if identity["kind"] == "random":
        seed = int(identity["weights"].rsplit(" ", 1)[-1])
        return BackboneSpec(identity["name"], "random", seed, pooling)
    if identity["kind"] == "torchvision" and weights is None:
        return BackboneSpec(identity["name"], identity["weights"].split(".")[-1])
    if identity["kind"] == "hf":  # its own weights, checked to be the very files (sha256)
        spec = BackboneSpec(identity["name"], weights or "published", pooling=pooling)
        if spec.identity().get("sha256") != identity.get("sha256"):
            raise CheckpointMismatchError(
                f"{identity['name']}'s weights are not those {what} features of (sha256 "
                f"{identity.get('sha256', '?')[:12]}…)")
        return spec
    if weights is None:
        raise CheckpointMismatchError(
            f"{what} features of {identity['name']} with weights file {identity['weights']} "
            f"(sha256 {identity.get('sha256', '?')[:12]}…); pass weights=")
    spec = BackboneSpec(identity["name"], weights)
    mine = spec.identity()
    if identity.get("sha256") and mine.get("sha256") != identity["sha256"]:
        raise CheckpointMismatchError(f"{weights} is not the weights file {what} features of "
                                      f"(sha256 {identity['sha256'][:12]}…)")
    return spec


def backbone_for_checkpoint(ckpt: Checkpoint, weights: str | None = None) -> BackboneSpec:
    """The backbone the head was trained on; a weights file must be given and must match."""
    spec = backbone_for_identity(ckpt.backbone, weights)
    if ckpt.backbone["kind"] not in ("random", "torchvision") or weights is not None:
        ckpt.check_inputs(ckpt.input["n_inputs"], spec.identity())
    return spec


def image_features(images: Iterable, store, *, weights: str | None = None,
                   device: str = "auto") -> np.ndarray:
    """The features a store's backbone and preprocessing give ``images`` (paths or URLs,
    bytes, or PIL images): what the store holds for an image it has, to find similar ones
    (:func:`~cxrdask.store.neighbours.neighbours`)."""
    spec = backbone_for_identity(store.provenance["backbone"], weights,
                                 f"the store {store.url} holds")
    preprocessing = Preprocessing.from_dict({**store.provenance["preprocessing"], "flip": "none"})
    runner = cached_runner(spec, device)
    arrays = []
    for i, item in enumerate(images):
        name, data = _image_bytes(item, i)
        arrays.append(preprocess_bytes(data, name, preprocessing)[0])
    if not arrays:
        return np.zeros((0, store.feature_dim), np.float32)
    return np.concatenate([runner(np.stack(arrays[i:i + 8])) for i in range(0, len(arrays), 8)])


def inference_preprocessing(ckpt: Checkpoint) -> Preprocessing:
    """The preprocessing the head's features were made with, without the training flip."""
    return Preprocessing.from_dict({**ckpt.provenance["preprocessing"], "flip": "none"})


def predict(
    images: Iterable,
    checkpoint: str | Checkpoint,
    *,
    weights: str | None = None,
    age: float | None = None,
    sex: str | None = None,
    view: str | None = None,
    device: str = "auto",
) -> pd.DataFrame:
    """The head's probability of each of its findings per image, with the backbone and
    preprocessing the head was trained on.

    Parameters
    ----------
    images
        Paths or URLs, bytes, or PIL images.
    checkpoint
        A head checkpoint (``head.pt``).
    weights
        The backbone's weights file, when the head was trained on one (its sha256 must match).
    age, sex, view
        Demographics of every image; unknown: age 50, sex halfway between F and M, view PA.
    device
        ``cpu``, ``cuda`` or ``auto``.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``image`` then the 14 findings.

    Raises
    ------
    ImageDecodeError
        An image cannot be decoded (the error names it).
    CheckpointMismatchError
        A weights file is needed, or it does not match the checkpoint.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    spec = backbone_for_checkpoint(ckpt, weights)
    preprocessing = inference_preprocessing(ckpt)
    runner = cached_runner(spec, device)
    names, arrays = [], []
    for i, item in enumerate(images):
        name, data = _image_bytes(item, i)
        names.append(name)
        arrays.append(preprocess_bytes(data, name, preprocessing)[0])
    if not arrays:
        return pd.DataFrame(columns=["image", *ckpt.label_names])
    features = np.concatenate([runner(np.stack(arrays[i:i + 8])) for i in range(0, len(arrays), 8)])
    inputs = head_inputs(ckpt, features, age, sex, view)
    with torch.inference_mode():
        probabilities = ckpt.head.probabilities(torch.from_numpy(inputs)).numpy()
    frame = pd.DataFrame(probabilities, columns=list(ckpt.label_names))
    frame.insert(0, "image", names)
    return frame


def _image_bytes(item, position: int) -> tuple[str, bytes]:
    import io

    from PIL import Image

    if isinstance(item, (bytes, bytearray)):
        return f"image-{position}", bytes(item)
    if isinstance(item, Image.Image):
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        return f"image-{position}", buffer.getvalue()
    import fsspec

    with fsspec.open(str(item), "rb") as handle:
        return os.path.basename(str(item)), handle.read()


__all__ = ["backbone_for_checkpoint", "backbone_for_identity", "head_inputs", "image_features",
           "inference_preprocessing", "predict"]
