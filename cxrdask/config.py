"""Every choice of an extraction in one typed, frozen dataclass, and the presets, in one place.

:class:`ExtractConfig` is what :func:`~cxrdask.extract.run.extract_features` takes, what the
store records as provenance (``provenance["extract_config"]``) and what the ``cxrdask
extract`` options are generated from (:func:`add_config_options`): a default or a help
text is written once, here. Presets (``seed2018``, the 2018 recipe) live here for both
extraction and training.
"""

from __future__ import annotations

import argparse
import functools
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_origin

from cxrdask.backbones.engines import engine_refusal
from cxrdask.backbones.spec import BackboneSpec
from cxrdask.errors import OptionError
from cxrdask.options import Options

DEFAULT_READ_RETRIES = 4  # extraction's --read-retries, and localisation's image reads
DEFAULT_DEMOGRAPHICS = ("age", "sex")  # the head's inputs after the features: the 2018 recipe's 2050

SplitMethod = Literal["auto", "official", "patient", "random"]
# torchvision's ImageNet networks, then torchxrayvision's chest X-ray ones (their own
# preprocessing; cxrdask.backbones.spec.XRV_BACKBONES).
BackboneName = Literal["resnet50", "densenet121", "resnet18",
                       "xrv-densenet121-res224-all", "xrv-densenet121-res224-nih",
                       "xrv-densenet121-res224-pc", "xrv-densenet121-res224-chex",
                       "xrv-densenet121-res224-rsna", "xrv-densenet121-res224-mimic_nb",
                       "xrv-densenet121-res224-mimic_ch", "xrv-resnet50-res512-all"]
Dtype = Literal["float16", "float32"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Engine = Literal["auto", "torch", "onnxruntime", "openvino"]
Flip = Literal["none", "train"]
ResizeOn = Literal["cpu", "device"]
PixelCompression = Literal["zstd", "lz4", "none"]
PresetName = Literal["default", "seed2018"]
ThresholdRule = Literal["youden", "specificity"]

DEFAULT_BATCH_SIZE = 8  # fastest on 2-core CPUs (measured); GPUs want 64 or more
# compile="auto" compiles fp32 backbones on CPU workers when each worker thread has this many
# images or more (benchmarks/bench_compile.py, 2-core AMD EPYC, ResNet50, batch 8, a new
# process as a new worker is): the compile with Inductor freezing takes 32-34 s per worker;
# fp32 runs 8.7 -> 10.0 images/s per thread, repaid after ~2,200 images; bf16 ran no faster
# compiled (19.4 -> 19.2), so auto leaves it eager. 10,000 images is 4.5x that break-even.
COMPILE_AUTO_MIN_IMAGES = 10_000
# engine="auto" runs a bf16 backbone on CPU workers on OpenVINO
# (cxrdask.backbones.engines.openvino) when each worker thread has this many images or more:
# with the ONNX export cached, starting it costs ~0.8 s more than an eager model's first batch,
# repaid by its 24.3 against 18.6 images/s per thread after ~60 images (2-core AMD EPYC with
# native bf16, ResNet50, batch 8); a machine's first run also exports the network (~3 s,
# once). A job smaller than this starts as soon as it can, eager.
OPENVINO_AUTO_MIN_IMAGES = 128
DEFAULT_MAX_FAILED_FRACTION = 0.05
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 2048

# The 2018 system: random image-level split and random flips of training images, batch 10,
# lr 3e-4, plateau patience 1, no early stopping, raw (unstandardised) features.
EXTRACT_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed2018": {"split": "random", "flip": "train"},
}
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed2018": dict(lr=3e-4, weight_decay=1e-5, betas=(0.9, 0.999), eps=1e-8, batch_size=10,
                     epochs=50, plateau_patience=1, plateau_factor=0.2, early_stopping=None,
                     standardize=False, preset="seed2018"),
}


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its command-line help (and, where the flag differs, how to spell it)."""
    return field(default=default, metadata={"help": help, "cli": cli})


@dataclass(frozen=True)
class ExtractConfig(Options):
    """How features are extracted: split, chunking, backbone and weights, arithmetic, failures.

    Frozen and typed; ``ExtractConfig(weights="random")`` or ``replace(config, dtype=...)``.
    Recorded in the store; a resumed store must have been made with the same backbone,
    preprocessing, dtype, precision, compile, engine, split and chunk size.
    """

    OPTIONS_NAME = "extraction"

    split: SplitMethod = _option(
        "auto", "how rows are split: auto = the official lists when the archive has them, "
                "else by patient")
    split_seed: int = _option(0, "seed of the patient/random split and of 2018's flips")
    chunk_rows: int | Literal["auto"] = _option(
        "auto", "rows per store chunk and task; auto gives every worker thread several tasks, "
                "at most 512 rows (a resumed store keeps its own)", type="chunk_rows")
    batch_size: int = _option(DEFAULT_BATCH_SIZE, "images per backbone call")
    backbone: BackboneName | str = _option(
        "resnet50", "torchvision network; torchxrayvision's (xrv-...); or timm:MODEL, a timm "
        "CNN (e.g. timm:convnext_tiny); the last two bring their own preprocessing",
        type="backbone", metavar="{" + ",".join(typing.get_args(BackboneName)) + ",timm:MODEL}")
    weights: str = _option("imagenet", "imagenet (the network's published weights) | a "
                                       "torchvision enum name | PATH.pth | random")
    weights_seed: int = _option(0, "seed of --weights random")
    device: str = _option("auto", "cpu | cuda | auto (the worker's GPU when it has one)")
    dtype: Dtype = _option("float16", "feature dtype in the store")
    precision: Precision = _option(
        "auto", "backbone arithmetic: auto = bf16 where the workers compute it natively (CPUs "
                "with AVX-512-BF16 or AMX, GPUs), else fp32; fp16: GPUs")
    compile: bool | Literal["auto"] = _option(
        "auto", "torch.compile the backbone (with Inductor freezing on CPUs): auto = PyTorch "
                f"fp32 on CPU workers (--engine torch) when the job gives each worker thread at least "
                f"{COMPILE_AUTO_MIN_IMAGES:,} images, enough to repay the compile (~30 s per "
                "worker; bf16 measured no faster compiled); yes; no", type="compile", nargs="?",
        const=True, metavar="{auto,yes,no}")
    engine: Engine = _option(
        "auto", "what runs the backbone: auto = ONNX Runtime where it runs fp32 on CPU workers "
                "(1.3x PyTorch on CPUs without native bf16); OpenVINO where it runs bf16 on "
                "CPU workers and each worker thread gets "
                f"{OPENVINO_AUTO_MIN_IMAGES:,} images or more (1.3x eager PyTorch, 3.1x with AMX); else "
                "PyTorch; torch; onnxruntime (CPU, fp32 only); openvino (CPU, fp32 or bf16)")
    preset: PresetName = _option("default", "seed2018: the 2018 recipe (random image split, flips)")
    resume: bool = _option(True, "start the store afresh instead of resuming",
                           flag="--overwrite", action="store_false")
    strict: bool = _option(
        False, "refuse a run with any missing image, stop at the first unreadable one")
    max_failed_fraction: float = _option(
        DEFAULT_MAX_FAILED_FRACTION,
        "share of rows allowed to fail (missing or unreadable images) before the run is refused "
        "up front or ends with exit status 3")
    io_threads: int = _option(8, "reader threads per worker (overlap object-storage latency)")
    read_retries: int = _option(
        DEFAULT_READ_RETRIES,
        "times a read is tried again after a transient failure (connection reset, timeout, "
           "HTTP 5xx), with exponential backoff; an image still unreadable is retriable: its "
           "chunk is not marked done and the next run reads it again (exit status 5)")
    retry_failed: bool = _option(
        False, "also recompute the chunks that hold failed rows (after restoring those images)")
    image_size: int = _option(
        224, "side of the square image the backbone sees (recorded in the store; 256, 320 or "
             "512 for detail, 64 or 128 to rehearse a large archive at a small compute cost)")
    resize: ResizeOn = _option(
        "cpu", "where images are resized to --image-size: cpu = Pillow in the decode threads; device = "
               "torch's antialiased resize on the worker's device (GPU nodes: the CPUs only "
               "decode, and with torchcodec installed a GPU decodes gray JPEGs itself, by "
               "nvJPEG). Recorded; the two differ by about one gray level")
    pixel_compression: PixelCompression = _option(
        "zstd", "codec of a pixel store this run writes (--pixels, cxrdask cache)")

    def __post_init__(self) -> None:
        _check_choices(self)
        BackboneSpec(name=self.backbone, weights="random")  # refuses an unknown name
        if self.chunk_rows != "auto" and (isinstance(self.chunk_rows, bool) or self.chunk_rows < 1):
            raise OptionError(f"chunk_rows must be a positive number of rows or 'auto', not "
                              f"{self.chunk_rows!r}")
        if isinstance(self.image_size, bool) or not MIN_IMAGE_SIZE <= self.image_size <= MAX_IMAGE_SIZE:
            raise OptionError(f"image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} "
                              f"pixels (the backbones halve it five times), not {self.image_size!r}")
        if self.batch_size < 1 or self.io_threads < 1:
            raise OptionError("batch_size and io_threads must be at least 1")
        refused = engine_refusal(self.engine, self.device, self.precision, self.compile)
        if refused:
            raise OptionError(refused)
        if self.read_retries < 0:
            raise OptionError(f"read_retries must be 0 or more, not {self.read_retries!r}")
        if not 0.0 <= self.max_failed_fraction <= 1.0:
            raise OptionError(f"max_failed_fraction must be within 0 and 1, not "
                              f"{self.max_failed_fraction!r}")

    @property
    def flip(self) -> Flip:
        """The training-image flip the preset asks for (``train`` for seed2018)."""
        return EXTRACT_PRESETS[self.preset].get("flip", "none")

    @property
    def split_method(self) -> SplitMethod:
        """The split actually used: the preset's where ``split`` is ``auto``."""
        return EXTRACT_PRESETS[self.preset].get("split", self.split) if self.split == "auto" \
            else self.split

    def to_dict(self) -> dict[str, Any]:
        """Plain values (what the store records)."""
        return asdict(self)


def _members(kind: Any) -> tuple:
    """The members of a union type (``int | Literal["auto"]``), or the type alone."""
    return get_args(kind) if get_origin(kind) in (typing.Union, types.UnionType) else (kind,)


def _literal_values(kind: Any) -> tuple:
    """The values a ``Literal`` (or a union holding one) allows; empty for other types."""
    if get_origin(kind) is Literal:
        return get_args(kind)
    return tuple(v for member in _members(kind) if get_origin(member) is Literal
                 for v in get_args(member))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_choices(config: Any) -> None:
    """Refuse a field typed with a ``Literal`` (alone or in a union, ``int | Literal["auto"]``)
    whose value is none of its choices, naming the field and the choices."""
    hints = _hints(config.__class__)
    for item in fields(config):
        kind = hints[item.name]
        value = getattr(config, item.name)
        allowed = _literal_values(kind)
        plain = tuple(member for member in _members(kind) if isinstance(member, type))
        if allowed and value not in allowed and not isinstance(value, plain):
            raise OptionError(f"{item.name} must be one of {', '.join(map(repr, allowed))}, "
                              f"not {value!r}")


def _chunk_rows(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of rows or 'auto', not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive number of rows, not {value}")
    return value


_SWITCH = {"yes": True, "true": True, "on": True, "1": True,
           "no": False, "false": False, "off": False, "0": False}


def _compile(text: str) -> bool | str:
    if text == "auto":
        return text
    if text.lower() not in _SWITCH:
        raise argparse.ArgumentTypeError(f"auto, yes or no, not {text!r}")
    return _SWITCH[text.lower()]


def _backbone(text: str) -> str:
    try:
        BackboneSpec(name=text, weights="random")
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_PARSERS = {"chunk_rows": _chunk_rows, "compile": _compile, "backbone": _backbone}


def add_config_options(parser: argparse.ArgumentParser, cls: type = ExtractConfig,
                       only: tuple[str, ...] | None = None) -> None:
    """Add one option per field of ``cls`` (or of its fields named in ``only``): its flag,
    type or choices, default and help."""
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        if only is not None and item.name not in only:
            continue
        cli = dict(item.metadata.get("cli", {}))
        flag = cli.pop("flag", "--" + item.name.replace("_", "-"))
        options: dict[str, Any] = {"dest": item.name, "default": item.default,
                                   "help": item.metadata["help"]}
        kind = hints[item.name]
        if kind is bool:
            options["action"] = cli.pop("action", "store_true")
        elif "type" in cli:
            options["type"] = _PARSERS[cli.pop("type")]
        elif _literal_values(kind):
            options["choices"] = list(_literal_values(kind))
        else:
            options["type"] = kind
        parser.add_argument(flag, **options, **cli)  # what is left: nargs, const, metavar


def config_from_args(args: argparse.Namespace, cls: type = ExtractConfig,
                     only: tuple[str, ...] | None = None) -> Any:
    """The config the parsed options of :func:`add_config_options` describe (the defaults
    for fields left out by ``only``)."""
    return cls(**{item.name: getattr(args, item.name) for item in fields(cls)
                  if only is None or item.name in only})


@dataclass(frozen=True)
class TrainConfig(Options):
    """Every training choice; saved in the checkpoint. ``TrainConfig.preset_config("seed2018")``
    is the 2018 recipe.

    Our defaults differ from 2018 where it helps: batch 256 (25x fewer steps, the same
    optimum) with lr 1e-3 scaled for it, inputs standardised with training-split statistics,
    plateau patience 2 and early stopping after 6 epochs without improvement.

    Attributes
    ----------
    lr, weight_decay, betas, eps : float
        Adam's.
    batch_size, epochs : int
        Rows per step, and the most epochs.
    plateau_patience, plateau_factor
        ReduceLROnPlateau on validation loss.
    early_stopping : int or None
        Stop after this many epochs without improvement.
    seed : int
        Seed of the head's initial weights and of the shuffles.
    demographics : tuple of str
        Inputs after the features.
    buffer_chunks : int
        Chunks the lazy reader shuffles together.
    resident_mb : int
        A split whose float32 inputs fit this many MiB is kept in memory after its first
        lazy pass (on a GPU: in a quarter of its free memory), so later epochs wait for no
        decompression; 0 reads every epoch lazily (host memory then flat in N).
    precision : str
        The head's arithmetic: ``fp32``, ``bf16`` (autocast; about 2x faster on CPUs with
        native bf16), or ``auto``: bf16 where the CPU or GPU computes it natively, else
        fp32. The checkpoint records what was used.
    cuda_graph : bool
        On a GPU, replay each full-size training step from one CUDA graph (the head is so
        small that kernel launches, not arithmetic, set a GPU step's time); False runs
        every step eagerly. No effect on a CPU.
    pos_weight, standardize : bool
        Weight positives by negatives / positives; standardise inputs.
    preset : str
        The preset these values came from.
    """

    OPTIONS_NAME = "training"


    lr: float = 1e-3
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = 256
    epochs: int = 50
    plateau_patience: int = 2
    plateau_factor: float = 0.2
    early_stopping: int | None = 6
    seed: int = 0
    demographics: tuple[str, ...] = DEFAULT_DEMOGRAPHICS
    buffer_chunks: int = 4
    resident_mb: int = 1024
    precision: str = "auto"
    cuda_graph: bool = True
    pos_weight: bool = True
    standardize: bool = True
    preset: str = "default"

    @classmethod
    def preset_config(cls, name: str = "default", **overrides) -> TrainConfig:
        """``default`` or ``seed2018`` (lr 3e-4, wd 1e-5, patience 1, factor 0.2, batch 10, 50 epochs)."""
        presets = TRAIN_PRESETS
        if name not in presets:
            raise OptionError(f"unknown preset {name!r}; use {', '.join(presets)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(cls(), **{**presets[name], **given})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["betas"] = list(self.betas)
        data["demographics"] = list(self.demographics)
        return data


@dataclass(frozen=True)
class EvaluateConfig(Options):
    """How :func:`~cxrdask.evaluation.report.evaluate` audits a head, beyond which store,
    head and split: intervals, operating points, expert labels and localisation.

    Attributes
    ----------
    bootstrap : int
        Patient resamples for the intervals (0: no intervals).
    stratified : bool
        Draw the AUCs' resamples per finding within two strata of patients, with and
        without a positive image of it (pROC's default, by patient): no resample lacks a
        class, which steadies the intervals of rare findings and small subgroups. False:
        plain patient resamples (the report says which, and how many were used).
    seed : int
        Seed of the resampling (and of localisation's control pairing).
    threshold_rule, specificity
        How each disease's threshold is chosen on the validation split: Youden's J, or the
        most sensitive threshold whose specificity is at least ``specificity``.
    expert_labels : str or None
        Google's 2019 expert labels (``google2019_nih-chest-xray-labels.csv[.gz]``, any
        fsspec URL): Pneumothorax, Nodule or mass and Airspace opacity scored on the
        split's relabelled images against those labels and NIH's.
    boxes, images : str or None
        NIH's ``BBox_List_2017.csv`` and the archive's images: the Grad-CAM map of every
        boxed finding on the split's images is boxed and scored as Wang et al. 2017 did
        (the checkpoint must then be a file). Both or neither.
    weights : str or None
        The backbone weights file, when the head was trained on one (for localisation).
    n_workers : int or None
        Processes of the local cluster localisation starts when no client is given.
    """

    OPTIONS_NAME = "evaluation"

    bootstrap: int = 1000
    stratified: bool = False
    seed: int = 0
    threshold_rule: ThresholdRule = "youden"
    specificity: float = 0.9
    expert_labels: str | None = None
    boxes: str | None = None
    images: str | None = None
    weights: str | None = None
    n_workers: int | None = None

    def __post_init__(self) -> None:
        _check_choices(self)
        if isinstance(self.bootstrap, bool) or self.bootstrap < 0:
            raise OptionError(f"bootstrap must be 0 (no intervals) or more resamples, not "
                              f"{self.bootstrap}")
        if not 0.0 < self.specificity < 1.0:
            raise OptionError(f"specificity must be between 0 and 1, not {self.specificity}")
        if (self.boxes is None) != (self.images is None):
            raise OptionError("localisation needs both the boxes (BBox_List_2017.csv) and the "
                              "images they were drawn on")


__all__ = [
    "COMPILE_AUTO_MIN_IMAGES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DEMOGRAPHICS",
    "DEFAULT_MAX_FAILED_FRACTION",
    "DEFAULT_READ_RETRIES",
    "EXTRACT_PRESETS",
    "OPENVINO_AUTO_MIN_IMAGES",
    "TRAIN_PRESETS",
    "BackboneName",
    "Dtype",
    "Engine",
    "EvaluateConfig",
    "ExtractConfig",
    "Flip",
    "PixelCompression",
    "Precision",
    "PresetName",
    "ResizeOn",
    "SplitMethod",
    "ThresholdRule",
    "TrainConfig",
    "add_config_options",
    "config_from_args",
]
