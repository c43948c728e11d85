"""An extraction checked and planned before it starts: its rows in store order, where each
image is, the backbone, the stores it writes, and what kind of pass it is.

:func:`plan_extraction` (images into features, optionally keeping the pixels),
:func:`plan_from_pixels` (a pixel store into features) and :func:`plan_cache` (images into a
pixel store only) check everything they can before a cluster starts or a byte is written;
:func:`cxrdask.extract.run.run_extraction` runs what they return. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cxrdask._fs import StorageOptions, filesystem
from cxrdask.backbones.engines import ENGINE_RULES
from cxrdask.backbones.spec import BackboneSpec, check_weights_available
from cxrdask.config import COMPILE_AUTO_MIN_IMAGES, ExtractConfig
from cxrdask.errors import (
    FailedRowsError,
    ImagesNotFoundError,
    MetadataError,
    OptionError,
    StoreMismatchError,
)
from cxrdask.extract.layout import local_layout, prepare_rows
from cxrdask.extract.resolve import Resolved, describe_auto_engine
from cxrdask.imaging.preprocessing import CPU_INTERPOLATION, DEVICE_INTERPOLATION, Preprocessing

if TYPE_CHECKING:
    import pandas as pd

    from cxrdask.archive.dicom_headers import ClientSource  # (pandas: imported by the call)
    from cxrdask.store.features import FeatureSettings, FeatureStore
    from cxrdask.store.rows import RowStore

PassKind = Literal["features", "cache"]
"""What a pass makes: ``features`` runs a backbone into a feature store (reading the images or
a pixel store, and perhaps keeping the pixels too); ``cache`` only decodes and resizes the
images into a pixel store."""


@dataclass
class ExtractionPlan:
    """A run checked before it starts: its rows, where each image is, the backbone, the store.

    :func:`plan_extraction` makes it without starting a cluster or writing anything, so every
    mistake it can find (a wrong images root, missing images, unavailable weights, a store
    made with other settings) is reported before any work starts; :func:`run_extraction`
    runs it.

    Attributes
    ----------
    config : ExtractConfig
        Every choice of the run.
    rows : pandas.DataFrame
        The rows in store order, with their ``split`` codes.
    urls : dict of str to str
        Each image's URL, by image index.
    missing : list of str
        Image indices of the metadata not found under the images root.
    store_exists : bool
        Whether a store is already at ``store_url`` (resumed unless ``config.resume`` is False).
    pixels_url : str or None
        A pixel store: read instead of the images (``pixels_role="source"``), or written
        beside the features (``"write"``; with ``store_url`` None, that is the whole run).
    """

    config: ExtractConfig
    rows: pd.DataFrame
    urls: dict[str, str]
    missing: list[str]
    images_root: str
    store_url: str | None
    storage_options: StorageOptions | None
    spec: BackboneSpec
    identity: dict
    preprocessing: Preprocessing
    split_info: dict
    archive: dict
    store_exists: bool
    pixels_url: str | None = None
    pixels_role: Literal["none", "source", "write"] = "none"
    chunk_rows: int | None = None  # fixed by an existing pixel store; else from the config
    resolved: Resolved | None = None  # the concrete arithmetic, once the workers are known

    @property
    def kind(self) -> PassKind:
        """What this pass makes (:data:`PassKind`): the one place that says so."""
        return "features" if self.store_url is not None else "cache"

    @property
    def runs_backbone(self) -> bool:
        return self.kind == "features"

    def written_urls(self) -> list[str]:
        """The stores this pass writes, the feature store first: each takes a writer lease."""
        urls = [self.store_url] if self.store_url is not None else []
        if self.pixels_role == "write" and self.pixels_url is not None:
            urls.append(self.pixels_url)
        return urls

    def settings(self) -> FeatureSettings:
        """The settings recorded in the store, which a resumed run must match."""
        from cxrdask.store.features import FeatureSettings

        c = self.config
        return FeatureSettings(backbone=self.identity, preprocessing=self.preprocessing.to_dict(),
                               dtype=c.dtype, precision=c.precision,  # type: ignore[arg-type]
                               compile=c.compile is True, engine=c.engine,  # type: ignore[arg-type]
                               split=self.split_info)

    def local_layout(self) -> tuple[int, int] | None:
        """The layout of a local cluster started for this plan when none is asked for
        (:func:`local_layout`; None for a cache pass, which runs no backbone)."""
        return local_layout(self.config) if self.runs_backbone else None

    def describe(self) -> str:
        """Lines for the user before the run: images found, split, backbone, the store."""
        c = self.config
        n = len(self.rows)
        found = n - len(self.missing)
        if self.pixels_role == "source":
            lines = [f"images: {n} rows of the pixel store {self.pixels_url}"]
        else:
            lines = [f"images: {found} of {n} found under {self.images_root}"
                     + (f" ({len(self.missing)} missing, e.g. {self.missing[0]}: they will be "
                        "recorded as failed rows)" if self.missing else "")]
        lines.append(f"split: {self.split_info.get('description', '')}")
        if self.runs_backbone:
            precision = ("precision auto (bf16 where the workers compute it natively, else "
                         "fp32)") if c.precision == "auto" else c.precision
            engine = f"engine auto ({describe_auto_engine()})" if c.engine == "auto" \
                else c.engine
            compiled = (f", compiled if PyTorch fp32 and each worker thread gets "
                        f"{COMPILE_AUTO_MIN_IMAGES:,} images or more (CPU workers)") \
                if c.compile == "auto" and c.engine in ("auto", "torch") \
                else ", compiled" if c.compile is True else ""
            lines.append(f"backbone: {self.identity['name']} ({self.identity['weights']}), "
                         f"{engine}, {precision}{compiled}, features as {c.dtype}")
            state = "resumed (finished chunks are skipped)" if c.resume and self.store_exists \
                else "new" if not self.store_exists else "overwritten"
            lines.append(f"store: {self.store_url} ({state})")
        if self.pixels_url is not None:
            role = "images read from" if self.pixels_role == "source" else "decoded images kept in"
            lines.append(f"pixels: {role} {self.pixels_url} "
                         f"({self.preprocessing.interpolation} to {self.preprocessing.size}²)")
        return "\n".join(lines)


def plan_extraction(
    metadata: pd.DataFrame | str | None,
    images_root: str,
    store_url: str,
    config: ExtractConfig | None = None,
    *,
    storage_options: StorageOptions | None = None,
    split_codes: np.ndarray | None = None,
    pixels: str | None = None,
    client: ClientSource = None,
    **options: Any,
) -> ExtractionPlan:
    """Check a run and plan it, before any cluster starts or anything is written.

    Parameters
    ----------
    metadata
        A frame from :func:`~cxrdask.archive.kinds.read_archive` (any archive kind) or
        :func:`~cxrdask.archive.kinds.nih.read_metadata` (NIH); the metadata or label file's
        URL; or None: the archive under ``images_root`` is detected and read.
    images_root
        The archive's root folder (or URL): NIH's (``images/`` or Kaggle's
        ``images_###/images/``), or any kind :func:`~cxrdask.archive.kinds.read_archive` reads.
    store_url
        Where the feature store is (or will be): a folder or any fsspec URL.
    config
        Every choice of the run; :class:`~cxrdask.config.ExtractConfig` defaults if None.
    storage_options
        fsspec options for every URL (credentials, endpoints).
    split_codes
        Split codes per metadata row (0 train, 1 validation, 2 test) instead of
        ``config.split``.
    pixels
        Also keep the decoded, resized images in a pixel store at this URL (made, or
        resumed), for later extractions with :func:`plan_from_pixels`.
    client
        Where the DICOM headers of an archive that leaves patients, views, sexes or ages to
        them are read (:func:`~cxrdask.archive.kinds.read_archive`): a Dask client or a
        function returning one; None: threads of this process.
    **options
        Fields of :class:`~cxrdask.config.ExtractConfig` that replace those of ``config``
        (``weights="random"``, ``chunk_rows=32``, ...).

    Returns
    -------
    ExtractionPlan
        The rows in store order, the image URLs, the backbone and the store's settings.

    Raises
    ------
    ImagesNotFoundError
        ``images_root`` does not exist, holds none of the metadata's images, or misses more
        than ``max_failed_fraction`` of them.
    ImageDecodeError
        With ``strict``, any image is missing.
    WeightsUnavailableError
        The weights cannot be had (offline and not cached, or a missing file).
    StoreMismatchError
        The store exists, is to be resumed, and was made with other settings.
    OptionError
        An option has a value cxrdask does not accept.
    """
    config = ExtractConfig.with_options(config, **options)
    _check_write_targets(storage_options, _inputs(metadata, images_root), store=store_url,
                         pixels=pixels)
    plan = _plan_images(metadata, images_root, store_url, config, storage_options, split_codes,
                        client)
    if pixels is not None:
        plan.pixels_url, plan.pixels_role = pixels, "write"
        plan.chunk_rows = _check_pixels_to_write(plan)
    return plan


def _plan_images(metadata: pd.DataFrame | str | None, images_root: str, store_url: str | None,
                 config: ExtractConfig, storage_options: StorageOptions | None,
                 split_codes: np.ndarray | None, client: ClientSource = None) -> ExtractionPlan:
    """The checks and plan of a run that reads the images (``store_url`` None: pixels only)."""
    from cxrdask.archive.images import check_images_found, locate_archive_images, locate_images
    from cxrdask.archive.kinds import read_archive
    from cxrdask.store.features import FeatureStore

    preprocessing = _preprocessing(config)
    if metadata is None or isinstance(metadata, str):
        metadata = read_archive(images_root, metadata=metadata, storage_options=storage_options,
                                client=client)
    assert not isinstance(metadata, str)
    source = metadata.attrs.get("source", "the metadata")
    if metadata.empty:  # before a cluster starts, a lease is taken or a folder made
        raise MetadataError(str(source), message=f"{source}: no rows to extract (the metadata, "
                            "after its filters, is empty)")
    fs, base = filesystem(images_root, storage_options)
    if not fs.exists(base):
        raise ImagesNotFoundError(f"the images folder {images_root} does not exist", root=images_root,
                                  expected=len(metadata))
    if "path" in metadata.columns:  # every kind but NIH says where each image is
        from cxrdask.archive.dicom_files import check_dicom_reader

        check_dicom_reader(metadata["path"])  # before any listing or worker
        located = locate_archive_images(metadata, images_root, storage_options)
    else:
        located = locate_images(images_root, storage_options=storage_options,
                                expected=metadata["image_index"])
    check_images_found(located, len(metadata), source, config.strict, config.max_failed_fraction,
                       by_path="path" in metadata.columns)
    rows, split_info = prepare_rows(
        metadata, config.split_method if split_codes is None else split_codes,
        seed=config.split_seed, archive_root=images_root, storage_options=storage_options)
    spec = _checked_backbone(config)
    from cxrdask.archive.synthetic import synthetic_settings

    archive = {"root": images_root, "kind": metadata.attrs.get("archive", "nih"),
               "synthetic": synthetic_settings(images_root, storage_options) is not None}
    plan = ExtractionPlan(
        config=config, rows=rows, urls=located.urls, missing=located.missing,
        images_root=images_root, store_url=store_url, storage_options=storage_options, spec=spec,
        identity=spec.identity(), preprocessing=preprocessing, split_info=split_info,
        archive=archive,
        store_exists=store_url is not None and FeatureStore.exists(store_url, storage_options),
    )
    if store_url is not None and config.resume and plan.store_exists:  # a features pass
        plan = _check_resumable(plan, FeatureStore.open(store_url, storage_options=storage_options))
    return plan


def _inputs(metadata: pd.DataFrame | str | None, images_root: str) -> dict[str, str | None]:
    """What a run reads, which no store it writes may be, lie inside or contain."""
    source = metadata if isinstance(metadata, str) or metadata is None else metadata.attrs.get("source")
    return {"the images folder": images_root,
            "the metadata CSV": source if isinstance(source, str) else None}


def _check_write_targets(storage_options: StorageOptions | None, inputs: dict[str, str | None], *,
                         store: str | None = None, pixels: str | None = None) -> None:
    """Every store the run writes is a folder of its own, apart from what it reads and from
    each other (:func:`~cxrdask.store.targets.check_store_target`): checked before anything
    is read at length or written, so a mistaken ``--store`` never harms the archive."""
    from cxrdask.store.targets import check_store_target

    if store is not None:
        check_store_target(store, "features", what="the store",
                           inputs={**inputs, "the pixel store": pixels},
                           storage_options=storage_options)
    if pixels is not None:
        check_store_target(pixels, "pixels", what="the pixel store", inputs=inputs,
                           storage_options=storage_options)


def _preprocessing(config: ExtractConfig) -> Preprocessing:
    """The store's preprocessing: the config's, with what the backbone fixes (a
    torchxrayvision network's size, normalisation, channel and crop); an ``image_size``
    other than the default and the network's own is refused."""
    own = BackboneSpec(name=config.backbone, weights="random").preprocessing()
    fixed = own.pop("fixed_size", False)
    # the model processor's resampling (bicubic for a Hugging Face model that asks for it)
    # on the CPU; torch's bilinear where images are resized on the device
    interpolation = (DEVICE_INTERPOLATION if config.resize == "device"
                     else own.pop("interpolation", CPU_INTERPOLATION))
    own.pop("interpolation", None)
    default = ExtractConfig().image_size
    if fixed and config.image_size not in (default, own["size"]):
        raise OptionError(f"{config.backbone} takes {own['size']}-pixel images (its own "
                          f"preprocessing), not image_size={config.image_size}")
    if config.image_size != default and not fixed:
        own["size"] = config.image_size
    return Preprocessing(**{"size": config.image_size, **own}, flip=config.flip,
                         interpolation=interpolation)


def _check_pixels_to_write(plan: ExtractionPlan) -> int | None:
    """An existing pixel store to be resumed must hold these rows, made with these settings;
    its chunk size is then the run's. Returns that chunk size (None: a new pixel store)."""
    from cxrdask.store.features import FeatureStore
    from cxrdask.store.pixels import PixelStore

    assert plan.pixels_url is not None
    if not (plan.config.resume and PixelStore.exists(plan.pixels_url, plan.storage_options)):
        return None
    existing = PixelStore.open(plan.pixels_url, storage_options=plan.storage_options)
    existing.check_pixel_settings(plan.preprocessing.to_dict())
    _check_strict_resume(existing, plan.config)
    existing.check_settings({**_rows_settings(plan), "split": plan.split_info})
    if plan.store_exists and plan.config.resume and plan.store_url is not None:
        store = FeatureStore.open(plan.store_url, storage_options=plan.storage_options)
        if store.chunk_rows != existing.chunk_rows:
            raise OptionError(f"the feature store {plan.store_url} has chunks of {store.chunk_rows} "
                              f"rows and the pixel store {plan.pixels_url} of "
                              f"{existing.chunk_rows}: write the pixels to a new store")
    return existing.chunk_rows


def plan_from_pixels(
    pixels: str,
    store_url: str,
    config: ExtractConfig | None = None,
    *,
    storage_options: StorageOptions | None = None,
    **options: Any,
) -> ExtractionPlan:
    """Plan an extraction that reads a pixel store instead of the images.

    The feature store gets the pixel store's rows, order, split and chunking; its
    provenance records the pixel store and the decode and resize settings the pixels were
    made with. Checked before any cluster starts, as :func:`plan_extraction`.

    Parameters
    ----------
    pixels
        The pixel store (``cxrdask cache``, or ``extract --pixels``).
    store_url
        The feature store to make or resume.
    config, storage_options, **options
        As for :func:`plan_extraction`. ``resize`` must be the pixel store's; ``split`` and
        ``chunk_rows`` are the pixel store's.

    Raises
    ------
    StoreNotFoundError
        No pixel store at ``pixels``.
    StoreMismatchError
        The pixel store was resized otherwise than ``config.resize`` asks, or the feature
        store exists, is to be resumed, and was made with other settings.
    WeightsUnavailableError, OptionError
        As for :func:`plan_extraction`.
    """
    from cxrdask.store.features import FeatureStore
    from cxrdask.store.pixels import PixelStore

    config = ExtractConfig.with_options(config, **options)
    _check_write_targets(storage_options, {"the pixel store it reads": pixels}, store=store_url)
    source = PixelStore.open(pixels, storage_options=storage_options)
    preprocessing = _preprocessing(config)
    source.check_pixel_settings(preprocessing.to_dict())
    if config.chunk_rows not in ("auto", source.chunk_rows):
        raise OptionError(f"chunk_rows {config.chunk_rows} asked for, but the pixel store {pixels} "
                          f"has chunks of {source.chunk_rows} rows (the feature store takes its "
                          "chunking); leave chunk_rows at auto")
    spec = _checked_backbone(config)
    archive = dict(source.provenance.get("source", {}))
    archive["pixels"] = {"url": pixels, "rows_fingerprint": source.provenance["rows_fingerprint"],
                         "created": source.provenance.get("created")}
    plan = ExtractionPlan(
        config=config, rows=source.metadata_table(), urls={}, missing=[],
        images_root=str(archive.get("root", "")), store_url=store_url,
        storage_options=storage_options, spec=spec, identity=spec.identity(),
        preprocessing=preprocessing, split_info=source.provenance.get("split", {}),
        archive=archive, store_exists=FeatureStore.exists(store_url, storage_options),
        pixels_url=pixels, pixels_role="source", chunk_rows=source.chunk_rows,
    )
    if config.resume and plan.store_exists:
        plan = _check_resumable(plan, FeatureStore.open(store_url, storage_options=storage_options),
                                chunk_rows=source.chunk_rows)
    return plan


def plan_cache(
    metadata: pd.DataFrame | str | None,
    images_root: str,
    pixels: str,
    config: ExtractConfig | None = None,
    *,
    storage_options: StorageOptions | None = None,
    split_codes: np.ndarray | None = None,
    client: ClientSource = None,
    **options: Any,
) -> ExtractionPlan:
    """Plan a pass that only decodes and resizes the images into a pixel store (no backbone).

    Checked like :func:`plan_extraction` (images found, an existing pixel store's settings)
    before any cluster starts. Run it with :func:`run_extraction`.
    """
    options.setdefault("weights", "random")  # no backbone runs: nothing to download
    config = ExtractConfig.with_options(config, **options)
    _check_write_targets(storage_options, _inputs(metadata, images_root), pixels=pixels)
    plan = _plan_images(metadata, images_root, None, config, storage_options, split_codes, client)
    plan.pixels_url, plan.pixels_role = pixels, "write"
    plan.chunk_rows = _check_pixels_to_write(plan)
    return plan


def _check_resumable(plan: ExtractionPlan, existing: FeatureStore, **wanted: Any) -> ExtractionPlan:
    """The plan for resuming ``existing``, checked against its settings before any work
    starts. ``precision``, ``compile`` and ``engine`` ``"auto"`` become the store's own: its
    features were made with them."""
    c = plan.config
    if c.precision == "auto":
        c = replace(c, precision=existing.provenance.get("precision", "fp32"))
    if c.compile == "auto":
        c = replace(c, compile=bool(existing.provenance.get("compile", False)))
    if c.engine == "auto":  # stores written before the setting existed ran PyTorch
        made_with = existing.provenance.get("engine", "torch")
        if made_with not in ENGINE_RULES:  # a retired engine (torchscript): say so, by name
            raise StoreMismatchError(existing.url, {"engine": (
                made_with, f"one this release has ({', '.join(ENGINE_RULES)}); the "
                f"{made_with} engine was retired: start the store afresh (--overwrite)")})
        c = replace(c, engine=made_with)
    plan = replace(plan, config=c)
    existing.check_settings({**resume_settings(plan), **wanted})
    _check_strict_resume(existing, c)
    return plan


def _check_strict_resume(existing: RowStore, config: ExtractConfig) -> None:
    """A strict run refuses to resume a store holding failed rows (unless it reads them
    again, ``retry_failed``): skipping their chunks as done would let it pass."""
    if not config.strict or config.retry_failed:
        return
    failures = existing.failures()
    if not failures.empty:
        raise FailedRowsError(existing.url, list(zip(failures["image_index"], failures["reason"],
                                                     strict=True)))


def resume_settings(plan: ExtractionPlan) -> dict:
    """What a feature store resumed by ``plan`` must have been made with: its settings and rows."""
    return {**plan.settings().to_dict(), **_rows_settings(plan)}


def _rows_settings(plan: ExtractionPlan) -> dict:
    """The rows a resumed store (features or pixels) must hold, and its chunk size if asked."""
    from cxrdask.store.features import rows_fingerprint

    settings = {"n_rows": len(plan.rows), "rows_fingerprint": rows_fingerprint(plan.rows["image_index"])}
    if plan.config.chunk_rows != "auto":
        settings["chunk_rows"] = plan.config.chunk_rows
    return settings


def _checked_backbone(config: ExtractConfig) -> BackboneSpec:
    """The run's backbone, its weights checked available (offline, a missing file) before any work."""
    spec = BackboneSpec(name=config.backbone, weights=config.weights or "random",
                        seed=config.weights_seed, pooling=config.pooling)
    check_weights_available(spec)
    return spec


__all__ = ["ExtractionPlan", "PassKind", "plan_cache", "plan_extraction", "plan_from_pixels",
           "prepare_rows", "resume_settings"]
