"""Every choice of a job in one typed, frozen dataclass per job, and the presets, in one place.

:class:`ExtractConfig` is what :func:`~cxrdask.extract.run.extract_features` takes and what
the store records as provenance (``provenance["extract_config"]``); :class:`TrainConfig`
what :func:`~cxrdask.head.train.train_head` takes and the checkpoint records;
:class:`EvaluateConfig` how :func:`~cxrdask.evaluation.report.evaluate` audits. The
``cxrdask`` command's options are generated from their fields (``cxrdask.cli.options``): a
default or a help text is written once, here. Presets (``seed2018``, the 2018 recipe) live
here for both extraction and training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from cxrdask.archive.views import check_views
from cxrdask.backbones.engines import engine_refusal
from cxrdask.backbones.spec import BackboneSpec
from cxrdask.choices import (
    BACKBONE_NAMES,
    BackboneName,
    Balance,
    Device,
    Dtype,
    Engine,
    Flip,
    HeadPrecision,
    PixelCompression,
    Pooling,
    Precision,
    PresetName,
    ResizeOn,
    SplitMethod,
    ThresholdRule,
    ViewSelection,
)
from cxrdask.errors import OptionError
from cxrdask.imaging.dicom import check_modalities
from cxrdask.options import Options, option

DEFAULT_READ_RETRIES = 4  # extraction's --read-retries, and localisation's image reads
DEFAULT_DEMOGRAPHICS = ("age", "sex")  # the head's inputs after the features: the 2018 recipe's 2050


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


@dataclass(frozen=True)
class ExtractConfig(Options):
    """How features are extracted: split, chunking, backbone and weights, arithmetic, failures.

    Frozen and typed; ``ExtractConfig(weights="random")`` or ``replace(config, dtype=...)``.
    Recorded in the store; a resumed store must have been made with the same backbone,
    preprocessing, dtype, precision, compile, engine, split and chunk size.
    """

    OPTIONS_NAME = "extraction"

    split: SplitMethod = option(
        "auto", "how rows are split: auto = the official lists when the archive has them, "
                "else by patient")
    split_seed: int = option(0, "seed of the patient/random split and of 2018's flips")
    chunk_rows: int | Literal["auto"] = option(
        "auto", "rows per store chunk and task; auto gives every worker thread several tasks, "
                "at most 512 rows (a resumed store keeps its own)", type="chunk_rows")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "images per backbone call")
    backbone: BackboneName | str = option(
        "resnet50", "torchvision network; torchxrayvision's (xrv-...); timm:MODEL, a timm CNN "
        "or ViT (e.g. timm:convnext_tiny); or hf:REPOSITORY_OR_FOLDER, a Hugging Face "
        "transformers model (e.g. hf:microsoft/rad-dino); the last three bring their own "
        "preprocessing", type="backbone",
        metavar="{" + ",".join(BACKBONE_NAMES) + ",timm:MODEL,hf:REPOSITORY_OR_FOLDER}")
    weights: str = option("imagenet", "imagenet (the network's published weights) | a "
                                       "torchvision enum name | PATH.pth | random; an hf: "
                                       "model's own safetensors, or allow-pickle to accept "
                                       "its pickled pytorch_model.bin")
    pooling: Pooling = option(
        "auto", "an hf: model's embedding: cls (its class token, DINOv2's pooler_output), mean "
                "(its patch tokens' mean), cls+mean; auto = cls where it has a class token, "
                "else its pooled output")
    weights_seed: int = option(0, "seed of --weights random")
    device: Device = option("auto", "where the backbone runs: auto = the worker's GPU when it has "
                                   "one, else its CPU")
    dtype: Dtype = option("float16", "feature dtype in the store")
    precision: Precision = option(
        "auto", "backbone arithmetic: auto = bf16 where the workers compute it natively (CPUs "
                "with AVX-512-BF16 or AMX, GPUs), else fp32; fp16: GPUs")
    compile: bool | Literal["auto"] = option(
        "auto", "torch.compile the backbone (with Inductor freezing on CPUs): auto = PyTorch "
                f"fp32 on CPU workers (--engine torch) when the job gives each worker thread at least "
                f"{COMPILE_AUTO_MIN_IMAGES:,} images, enough to repay the compile (~30 s per "
                "worker; bf16 measured no faster compiled); yes; no", type="compile", nargs="?",
        const=True, metavar="{auto,yes,no}")
    engine: Engine = option(
        "auto", "what runs the backbone: auto = ONNX Runtime where it runs fp32 on CPU workers "
                "(1.3x PyTorch on CPUs without native bf16); OpenVINO where it runs bf16 on "
                "CPU workers and each worker thread gets "
                f"{OPENVINO_AUTO_MIN_IMAGES:,} images or more (1.3x eager PyTorch, 3.1x with AMX); else "
                "PyTorch; torch; onnxruntime (CPU, fp32 only); openvino (CPU, fp32 or bf16)")
    preset: PresetName = option("default", "seed2018: the 2018 recipe (random image split, flips)")
    resume: bool = option(True, "start the store afresh instead of resuming",
                           flag="--overwrite", action="store_false")
    strict: bool = option(
        False, "refuse a run with any missing image, stop at the first unreadable one")
    max_failed_fraction: float = option(
        DEFAULT_MAX_FAILED_FRACTION,
        "share of rows allowed to fail (missing or unreadable images) before the run is refused "
        "up front or ends with exit status 3")
    io_threads: int = option(8, "reader threads per worker (overlap object-storage latency)")
    read_retries: int = option(
        DEFAULT_READ_RETRIES,
        "times a read is tried again after a transient failure (connection reset, timeout, "
           "HTTP 5xx), with exponential backoff; an image still unreadable is retriable: its "
           "chunk is not marked done and the next run reads it again (exit status 5)")
    retry_failed: bool = option(
        False, "also recompute the chunks that hold failed rows (after restoring those images)")
    image_size: int = option(
        224, "side of the square image the backbone sees (recorded in the store; 256, 320 or "
             "512 for detail, 64 or 128 to rehearse a large archive at a small compute cost)")
    resize: ResizeOn = option(
        "cpu", "where images are resized to --image-size: cpu = Pillow in the decode threads; device = "
               "torch's antialiased resize on the worker's device (GPU nodes: the CPUs only "
               "decode, and with torchcodec installed a GPU decodes gray JPEGs itself, by "
               "nvJPEG). Recorded; the two differ by about one gray level")
    modalities: str = option(
        "CR,DX", "DICOM modalities read as chest radiographs (CR, DX: computed and digital "
                 "radiography); an object of another (a CT or MR slice, a secondary capture) "
                 "is a failed row naming its modality; a comma-separated list, or any")
    pixel_compression: PixelCompression = option(
        "zstd", "codec of a pixel store this run writes (--pixels, cxrdask cache)")

    def __post_init__(self) -> None:
        self.check_choices()
        # refuses an unknown name, or a pooling it does not take
        BackboneSpec(name=self.backbone, weights="random", pooling=self.pooling)
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
        check_modalities(self.modalities)
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
    resident_mb : int or "auto"
        Host memory, in MiB, for the splits kept after their first lazy pass (float16
        features, float32 demographics and targets), so later epochs wait for no
        decompression: the training split first, then the validation split, each kept
        where it fits what is left (on a GPU: in a quarter of its free memory). ``auto``:
        half the memory available when training starts. 0 reads every epoch lazily (host
        memory then flat in N). Which was chosen is logged and kept in the result.
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

    lr: float = option(1e-3, "Adam's learning rate")
    weight_decay: float = option(1e-5, "Adam's weight decay")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = option(256, "rows per training step")
    epochs: int = option(50, "the most epochs (early stopping may end sooner)")
    plateau_patience: int = 2
    plateau_factor: float = 0.2
    early_stopping: int | None = 6
    seed: int = option(0, "seed of the head's initial weights and of the shuffles")
    demographics: tuple[str, ...] = DEFAULT_DEMOGRAPHICS
    buffer_chunks: int = 4
    resident_mb: int | Literal["auto"] = "auto"
    precision: HeadPrecision = option(
        "auto", "the head's arithmetic: auto = bf16 where the CPU or GPU computes it natively, "
                "else fp32 (recorded in the checkpoint)")
    cuda_graph: bool = option(
        True, "on a GPU, run every training step eagerly instead of replaying it from one CUDA "
              "graph (for debugging; several times slower)", flag="--no-cuda-graph",
        action="store_false")
    pos_weight: bool = True
    standardize: bool = True
    preset: PresetName = option(
        "default", "seed2018: the 2018 recipe (batch 10, lr 3e-4, no early stopping)")
    views: ViewSelection | tuple[str, ...] = option(
        "frontal", "which rows by view: frontal (PA, AP and their variants, and rows with no "
                   "view recorded), all, or a comma-separated list of families (frontal, "
                   "lateral, other, unknown) or views (PA, LATERAL, ...)", type="views")
    balance: Balance = option(
        "rows", "with several stores: rows = each store's share of an epoch in proportion to "
                "its rows; archive = an equal share for each")

    def __post_init__(self) -> None:
        check_views(self.views)  # first: its message names the lists it also takes
        self.check_choices()
        if self.batch_size < 1 or self.epochs < 1 or self.buffer_chunks < 1:
            raise OptionError(f"batch_size, epochs and buffer_chunks must be at least 1, not "
                              f"{self.batch_size}, {self.epochs} and {self.buffer_chunks}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise OptionError(f"lr must be above 0 and weight_decay 0 or more, not {self.lr} "
                              f"and {self.weight_decay}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise OptionError(f"early_stopping must be None or at least 1, not {self.early_stopping}")
        if self.resident_mb != "auto" and (isinstance(self.resident_mb, bool)
                                           or not isinstance(self.resident_mb, int)
                                           or self.resident_mb < 0):
            raise OptionError(f"resident_mb must be 'auto', 0 (always lazy) or more, not "
                              f"{self.resident_mb!r}")

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
        data["views"] = self.views if isinstance(self.views, str) else list(self.views)
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
    views : str or tuple of str
        Which rows are scored by view (:mod:`cxrdask.archive.views`): ``frontal`` (the
        default), ``all``, or families or views.
    """

    OPTIONS_NAME = "evaluation"

    bootstrap: int = option(1000, "patient resamples for the 95%% intervals (0: none)")
    stratified: bool = option(
        False, "draw the AUCs' resamples per finding within patients with and without a "
               "positive image (pROC's default): none lacks a class")
    seed: int = option(0, "seed of the resampling")
    threshold_rule: ThresholdRule = option(
        "youden", "how each disease's threshold is chosen on the validation split")
    specificity: float = option(0.9, "the specificity kept by --threshold-rule specificity")
    expert_labels: str | None = option(
        None, "Google's 2019 expert labels (google2019_nih-chest-xray-labels.csv[.gz]): score "
              "Pneumothorax, Nodule or mass and Airspace opacity against them", metavar="CSV")
    boxes: str | None = option(
        None, "NIH's BBox_List_2017.csv: score Grad-CAM localisation of the boxed findings "
              "(needs --images; runs on a Dask cluster)", metavar="CSV")
    images: str | None = option(None, "the archive's images, for --boxes")
    weights: str | None = option(
        None, "backbone weights file, when the head was trained on one")
    n_workers: int | None = option(None, "local worker processes for --boxes", flag="--workers")
    views: ViewSelection | tuple[str, ...] = option(
        "frontal", "which rows by view: frontal (PA, AP and their variants, and rows with no "
                   "view recorded), all, or a comma-separated list of families or views",
        type="views")

    def __post_init__(self) -> None:
        check_views(self.views)
        self.check_choices()
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
]
