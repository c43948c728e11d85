"""Every list of choices the library and its command line offer, each defined once as a
``Literal`` (for type checkers and the API's signatures) with its tuple of values (for
checks, ``--help`` and errors) derived from it.

Imports nothing heavy, so ``cxrdask COMMAND --help`` lists the choices without importing
pandas or torch; the modules that act on a choice import it from here.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin


def values_of(kind: Any) -> tuple:
    """The values a ``Literal`` allows, nested ``Literal``s and unions (``int |
    Literal["auto"]``) flattened, in order; empty for other types."""
    if get_origin(kind) is Literal:
        return tuple(v for arg in get_args(kind) for v in (values_of(arg) or (arg,)))
    if get_origin(kind) in (typing.Union, types.UnionType):
        return tuple(v for member in get_args(kind) for v in values_of(member))
    return ()


# What an archive is, and how its files are read.
ArchiveKind = Literal["nih", "chexpert", "mimic-cxr-jpg", "padchest", "vindr-cxr",
                      "rsna-pneumonia", "dicom", "csv"]
ARCHIVE_KINDS: tuple[str, ...] = values_of(ArchiveKind)
ArchiveChoice = Literal["auto", ArchiveKind]  # "auto": detected from the archive's files
# The archives `cxrdask synth` imitates (their folders, image formats and label files).
Layout = Literal["nih", "chexpert", "mimic-cxr-jpg", "padchest", "vindr-cxr", "rsna-pneumonia",
                 "dicom-export"]
LAYOUTS: tuple[str, ...] = values_of(Layout)
CsvVariant = Literal["kaggle2017", "v2020", "sample_labels"]  # NIH's metadata CSV as published
Prevalence = Literal["nih", "balanced"]
UncertainPolicy = Literal["missing", "positive", "negative"]  # CheXpert's -1, MIMIC's
UNCERTAIN_POLICIES: tuple[str, ...] = values_of(UncertainPolicy)

# Splits: how rows are assigned, and the splits' names (their codes are their positions).
SplitMethod = Literal["auto", "official", "patient", "random"]
SplitName = Literal["train", "validation", "test"]
SPLIT_NAMES: tuple[str, ...] = values_of(SplitName)
ScoredSplit = Literal[SplitName, "all"]  # what evaluation scores: one split, or every row

# Backbones: torchvision's ImageNet networks, then torchxrayvision's chest X-ray ones (their
# own preprocessing; cxrdask.backbones.spec.XRV_BACKBONES, checked equal at its import).
TorchvisionBackbone = Literal["resnet50", "densenet121", "resnet18"]
XrvBackbone = Literal["xrv-densenet121-res224-all", "xrv-densenet121-res224-nih",
                      "xrv-densenet121-res224-pc", "xrv-densenet121-res224-chex",
                      "xrv-densenet121-res224-rsna", "xrv-densenet121-res224-mimic_nb",
                      "xrv-densenet121-res224-mimic_ch", "xrv-resnet50-res512-all"]
BackboneName = Literal[TorchvisionBackbone, XrvBackbone]
BACKBONE_NAMES: tuple[str, ...] = values_of(BackboneName)
# A transformer's embedding: its class token, the mean of its patch tokens, or both side by
# side (DINOv2's linear probes); auto: the class token where the model has one, else its
# pooled output.
Pooling = Literal["auto", "cls", "mean", "cls+mean"]
POOLINGS: tuple[str, ...] = values_of(Pooling)

# Where and how things compute.
Device = Literal["auto", "cpu", "cuda"]  # auto: the GPU where there is one
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # a backbone's arithmetic
HeadPrecision = Literal["auto", "fp32", "bf16"]  # the head's
Engine = Literal["auto", "torch", "onnxruntime", "openvino"]
Dtype = Literal["float16", "float32"]  # features as stored
Flip = Literal["none", "train"]
ResizeOn = Literal["cpu", "device"]
PixelCompression = Literal["zstd", "lz4", "none"]
PresetName = Literal["default", "seed2018"]
Balance = Literal["rows", "archive"]  # how several stores share an epoch
ViewSelection = Literal["frontal", "all"]  # or a list of view families or views
ThresholdRule = Literal["youden", "specificity"]

__all__ = [
    "ARCHIVE_KINDS",
    "BACKBONE_NAMES",
    "LAYOUTS",
    "POOLINGS",
    "SPLIT_NAMES",
    "UNCERTAIN_POLICIES",
    "ArchiveChoice",
    "ArchiveKind",
    "BackboneName",
    "Balance",
    "CsvVariant",
    "Device",
    "Dtype",
    "Engine",
    "Flip",
    "HeadPrecision",
    "Layout",
    "PixelCompression",
    "Pooling",
    "Precision",
    "PresetName",
    "Prevalence",
    "ResizeOn",
    "ScoredSplit",
    "SplitMethod",
    "SplitName",
    "ThresholdRule",
    "TorchvisionBackbone",
    "UncertainPolicy",
    "ViewSelection",
    "XrvBackbone",
    "values_of",
]
