"""Train the diagnosis head out of core from one feature store or several, and grid-search it
on Dask.

The loss is BCE on logits with each disease's positives weighted by its negatives /
positives ratio on the training split (counted in one lazy pass over the labels), as the
2018 system weighted by disease frequency; a label an archive does not give is missing, not
negative (:mod:`cxrdask.head.loss`). Adam, ReduceLROnPlateau, a checkpoint whenever
validation loss improves, optional early stopping, a fixed seed. Several stores train one
head over the union of their findings (:mod:`cxrdask.head.union`).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from cxrdask._fs import StorageOptions
from cxrdask.backbones.hardware import resolve_device, resolve_precision
from cxrdask.config import TrainConfig
from cxrdask.errors import CxrDaskError, OptionError
from cxrdask.head.batches import FeatureBatches, label_counts, open_store
from cxrdask.head.loss import MaskedBCEWithLogits, loss_for
from cxrdask.head.model import new_head, save_checkpoint
from cxrdask.head.resident import keep_where_they_fit, to_gpu
from cxrdask.head.train_step import EagerStep, adam, train_step
from cxrdask.head.union import (
    MultiStoreBatches,
    check_same_features,
    label_columns,
    part_buffer_chunks,
    union_findings,
)
from cxrdask.options import renamed
from cxrdask.store.copies import Copies, copies_of_earlier, copies_phrase
from cxrdask.store.features import STATUS_OK, FeatureStore
from cxrdask.store.targets import check_output_folder

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from cxrdask.progress import Progress


@dataclass
class TrainResult:
    """The best checkpoint, the per-epoch history, and where the curves were written."""

    checkpoint: str
    best_epoch: int
    best_val_loss: float
    history: pd.DataFrame
    seconds: float
    files: list[str] = field(default_factory=list)
    # Per store: its URL, archive, the rows each split gave and each view family's rows
    # (what the checkpoint records as provenance["stores"]).
    stores: list[dict[str, Any]] = field(default_factory=list)
    # Per split: kept in memory after the first epoch, or read lazily every epoch, and why.
    memory: dict[str, str] = field(default_factory=dict)

    def rows_used(self) -> str:
        """One line per store: rows trained and validated on, and the views kept and left out."""
        lines = []
        for each in self.stores:
            views = ", ".join(f"{family} {n}" for family, n in each["views"].items() if n)
            left = ", ".join(f"{family} {n}" for family, n in each["views_left_out"].items() if n)
            lines.append(f"{each['url']} ({each['archive']}): {each['rows']['train']} training and "
                         f"{each['rows']['validation']} validation rows; views {views}"
                         + (f"; left out by --views {each['views_kept']}: {left}" if left else "")
                         + copies_phrase(each.get("copies")))
        return "\n".join(lines)


def _pos_weight(stores: list[FeatureStore], findings: list[str], views) -> torch.Tensor:
    """Each finding's negatives / positives over every store's training rows (a store that
    does not label a finding adds neither)."""
    positives = np.zeros(len(findings), dtype=np.int64)
    negatives = np.zeros(len(findings), dtype=np.int64)
    for store in stores:
        n, pos, neg = label_counts(store, "train", views)
        if n == 0:
            raise CxrDaskError(f"{store.url} has no readable training rows"
                               + ("" if views == "all" else f" of views {views}"))
        columns = np.asarray(label_columns(store, findings))
        found = columns >= 0
        positives[found] += pos[columns[found]]
        negatives[found] += neg[columns[found]]
    # A disease absent from the training split gets weight 1 (it cannot be learnt anyway).
    weight = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(weight, dtype=torch.float32)


def input_statistics(batches: FeatureBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input mean and standard deviation over a split, in one streaming pass (float64)."""
    total = torch.zeros(batches.n_inputs, dtype=torch.float64)
    squares = torch.zeros(batches.n_inputs, dtype=torch.float64)
    rows = 0
    for inputs, _ in batches:
        values = inputs.double()
        total += values.sum(0)
        squares += (values * values).sum(0)
        rows += len(values)
    mean = total / max(rows, 1)
    std = (squares / max(rows, 1) - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def _run_epoch(head, batches, criterion, step: EagerStep | None = None,
               device: torch.device | None = None, precision: str = "fp32") -> float:
    """One pass; trains when a step (:mod:`cxrdask.head.train_step`) is given. Returns the mean
    loss per row.

    The loss is summed on the device and read once per epoch: a per-batch ``.item()``
    would make a GPU wait for every step. On a GPU, each batch is copied from pinned
    memory without blocking while the reader thread prepares the next buffer.
    """
    head.train(step is not None)
    device = device or torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    rows = 0
    cuda = device.type == "cuda"
    with torch.set_grad_enabled(step is not None):
        for inputs, targets in batches:
            if cuda and not inputs.is_cuda:
                inputs, targets = to_gpu(inputs, device), to_gpu(targets, device)
            if step is not None:
                loss = step(inputs, targets)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = head(inputs)
                loss = criterion(logits.float(), targets)
            total += loss.detach() * len(inputs)
            rows += len(inputs)
    return float(total) / max(rows, 1)


def _step_scheduler(scheduler, optimizer: torch.optim.Optimizer, val_loss: float) -> None:
    """ReduceLROnPlateau's step, keeping a device-tensor learning rate (which a CUDA graph
    reads) the same tensor, whichever way this torch's scheduler writes the new value."""
    group = optimizer.param_groups[0]
    held = group["lr"] if isinstance(group["lr"], torch.Tensor) else None
    scheduler.step(val_loss)
    if held is not None and group["lr"] is not held:
        held.fill_(float(group["lr"]))
        group["lr"] = held


def train_head(
    store: FeatureStore | str | Sequence[FeatureStore | str],
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike = "head-out",
    *,
    storage_options: StorageOptions | None = None,
    progress: Progress = True,
    plot: bool = True,
    device: str = "auto",
    **options: Any,
) -> TrainResult:
    """Train a head on the store's training split, validating each epoch, reading chunks lazily.

    The loss is BCE with each disease's positives weighted by negatives / positives on the
    training split; the checkpoint is written whenever validation loss improves.

    Parameters
    ----------
    store
        A :class:`FeatureStore` or its URL; or several (a list): one head over the union of
        their findings, each label missing where a store's archive does not give it, each
        store's own train and validation split. They must share the backbone and
        preprocessing (refused before any pass, naming the difference); ``config.balance``
        says how an epoch draws from them. The checkpoint records every store, and the
        rows of each split and view it used.
    config, **options
        Every training choice (:class:`TrainConfig` defaults if None), and fields of it
        that replace the config's: ``train_head(store, out_dir="h", epochs=5)``.
    out_dir
        Where ``head.pt`` (the best checkpoint), ``history.csv`` and ``curves.png`` go.
    storage_options
        fsspec options.
    progress
        True: a progress bar; False: none; or an ``fsspec.callbacks.Callback`` of your own
        (:data:`cxrdask.progress.Progress`).
    plot
        Draw ``curves.png``.
    device
        ``cpu``, ``cuda`` or ``auto`` (the GPU where there is one). Chunks are still read
        lazily on the host; batches go to the device as they are trained on. The
        checkpoint's tensors are saved on the CPU either way.

    Returns
    -------
    TrainResult
        The checkpoint's path, the best epoch and loss, the history, the seconds taken.

    Raises
    ------
    CxrDaskError
        A store has no readable training or validation rows (of the views asked for).
    CheckpointMismatchError
        ``config.demographics`` asks for inputs the store does not have.
    StoreMismatchError
        Several stores whose features differ (backbone, preprocessing, dimension).
    """
    from cxrdask.progress import progress_callback

    config = TrainConfig.with_options(config, **options)
    where = resolve_device(device)  # checked before any chunk is read
    precision = resolve_precision(config.precision, where)
    if precision not in ("fp32", "bf16"):
        raise OptionError(f"the head trains in fp32 or bf16 (or auto), not {config.precision!r}")
    stores = _open_stores(store, storage_options)
    check_output_folder(str(out_dir), "the output folder",
                        {f"the store {k + 1}": s.url for k, s in enumerate(stores)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    findings = union_findings(stores) if len(stores) > 1 else list(stores[0].label_names)
    # An image and its copies in one split: a later store's copies of an earlier store's
    # images are left out (RSNA Pneumonia's images are NIH's).
    copies: list[Copies | None] = [None]
    if len(stores) > 1:
        copies = [copies_of_earlier(stores, k) for k in range(len(stores))]
    train, val, head = _prepare(stores, findings, config, where, copies)
    feeds: dict[str, Any] = {"train": train, "validation": val}
    memory = keep_where_they_fit(feeds, where, config.resident_mb, config.seed)
    for name, chosen in memory.items():
        logger.info(f"{name} split: {chosen}")
    weight = _pos_weight(stores, findings, config.views) if config.pos_weight else None
    criterion = _loss(stores, findings, weight).to(where)
    used = [_store_record(s, train, val, k, config.views, copies[k]) for k, s in enumerate(stores)]
    optimizer = adam(head.parameters(), config.lr, config.weight_decay, config.betas,
                     config.eps, where)
    step = train_step(head.layers, criterion, optimizer, where, precision, config.cuda_graph)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=config.plateau_patience, factor=config.plateau_factor)
    checkpoint = str(out / "head.pt")
    save = functools.partial(save_checkpoint, checkpoint, head,
                             config={**config.to_dict(), "precision": precision},
                             input_spec={"feature_dim": stores[0].feature_dim,
                                         "demographics": list(config.demographics),
                                         "n_inputs": train.n_inputs},
                             provenance=_checkpoint_provenance(stores, where, used),
                             label_names=findings)
    started = time.perf_counter()
    bar = progress_callback(progress, config.epochs, desc="train", unit="epoch")
    with torch.random.fork_rng(devices=[]), bar:
        torch.manual_seed(config.seed)
        history, best_loss, best_epoch = _fit(head, feeds, criterion, step, optimizer, scheduler,
                                              config, where, precision, save, bar)
    frame = pd.DataFrame(history)
    files = [checkpoint, str(out / "history.csv")]
    frame.to_csv(files[1], index=False)
    if plot:
        files.append(plot_curves(frame, out / "curves.png"))
    return TrainResult(checkpoint=checkpoint, best_epoch=best_epoch, best_val_loss=best_loss,
                       history=frame, seconds=time.perf_counter() - started, files=files,
                       stores=used, memory=memory)


def _fit(head, feeds: dict[str, Any], criterion, step, optimizer, scheduler, config: TrainConfig,
         where: torch.device, precision: str, save, bar) -> tuple[list[dict], float, int]:
    """The epochs: train, validate, step the scheduler, save the checkpoint whenever the
    validation loss improves, stop early when the config says. Returns the history, and the
    best validation loss and its epoch."""
    from cxrdask.progress import show_values

    history, (best_loss, best_epoch, stale) = [], (float("inf"), -1, 0)
    for epoch in range(config.epochs):
        t = time.perf_counter()
        feeds["train"].set_epoch(epoch)
        train_loss = _run_epoch(head.layers, feeds["train"], criterion, step, where, precision)
        val_loss = _run_epoch(head.layers, feeds["validation"], criterion, None, where, precision)
        lr = float(optimizer.param_groups[0]["lr"])
        _step_scheduler(scheduler, optimizer, val_loss)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                        "lr": lr, "seconds": time.perf_counter() - t})
        bar.relative_update(1)
        show_values(bar, train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", lr=f"{lr:.1e}")
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            save(epoch=epoch, val_loss=val_loss)
        else:
            stale += 1
            if config.early_stopping and stale >= config.early_stopping:
                break
    return history, best_loss, best_epoch


def _open_stores(stores, storage_options: StorageOptions | None) -> list[FeatureStore]:
    """The stores a head trains on, opened, checked to hold one kind of features."""
    listed = [stores] if isinstance(stores, (str, os.PathLike, FeatureStore)) else list(stores)
    if not listed:
        raise OptionError("train_head needs a feature store (or a list of them)")
    opened = [open_store(s if isinstance(s, FeatureStore) else str(s), storage_options)
              for s in listed]
    urls = [s.url for s in opened]
    if len(set(urls)) < len(urls):
        raise OptionError(f"a store is given twice: {', '.join(urls)}")
    check_same_features(opened)
    return opened


def _prepare(stores: list[FeatureStore], findings: list[str], config: TrainConfig,
             where: torch.device, copies: list[Copies | None]) -> tuple[Any, Any, Any]:
    """The training and validation readers (one store's, or several read as one, each
    without its ``copies`` of earlier stores' images) and a new head on ``where``, its
    inputs standardised with the training split's statistics when the config says so."""
    several = len(stores) > 1
    common: dict[str, Any] = dict(
        demographics=config.demographics, views=config.views,
        buffer_chunks=part_buffer_chunks(config.buffer_chunks, len(stores)))
    trains, vals = [], []
    for store, copied in zip(stores, copies, strict=True):
        columns = label_columns(store, findings) if several else None
        left_out = copied.rows if copied is not None and len(copied.rows) else None
        trains.append(FeatureBatches(store, "train", config.batch_size, shuffle=True,
                                     seed=config.seed, label_columns=columns,
                                     exclude_rows=left_out, **common))
        vals.append(FeatureBatches(store, "validation", max(config.batch_size, 1024),
                                   shuffle=False, label_columns=columns, exclude_rows=left_out,
                                   **common))
        if vals[-1].n_rows == 0:
            raise CxrDaskError(f"{store.url} has no readable validation rows to select a "
                               "checkpoint" + ("" if config.views == "all"
                                               else f" of views {config.views}"))
    train: Any = trains[0]
    val: Any = vals[0]
    if several:
        train = MultiStoreBatches(trains, shuffle=True, balance=config.balance, seed=config.seed)
        val = MultiStoreBatches(vals, shuffle=False)
    head = new_head(train.n_inputs, config.seed, len(findings))
    if config.standardize:
        head.set_standardisation(*input_statistics(train))
        for batches in (train, val):  # done by the reader thread; the head keeps it for inference
            batches.standardise(head.input_mean.numpy(), head.input_scale.numpy())
    head.to(where)
    return train, val, head


def _loss(stores: list[FeatureStore], findings: list[str], weight: torch.Tensor | None):
    """The masked loss where any label is missing (a store's, or a finding a store does not
    give), else plain BCE (:func:`~cxrdask.head.loss.loss_for`)."""
    if len(stores) == 1:
        return loss_for(stores[0], weight)
    return MaskedBCEWithLogits(weight)


def _store_record(store: FeatureStore, train, val, k: int, views,
                  copies: Copies | None = None) -> dict[str, Any]:
    """What a checkpoint records of one store it trained on: URL, identity, archive, the
    rows of each split and of each view family, the families the views left out, and (of
    several stores) the copies of earlier stores' images left out."""
    from cxrdask.archive.splits import TRAIN, VALIDATION
    from cxrdask.archive.views import view_counts, view_mask

    parts = (train.parts[k], val.parts[k]) if isinstance(train, MultiStoreBatches) else (train, val)
    codes, status = store.read("split"), store.read("status")
    readable = np.isin(codes, (TRAIN, VALIDATION)) & (status == STATUS_OK)
    view = store.read("view")
    kept = view_mask(view, views)
    return {"url": store.url, "rows_fingerprint": store.provenance.get("rows_fingerprint"),
            "archive": (store.provenance.get("archive") or {}).get("kind", "nih"),
            "findings": list(store.label_names),
            "rows": {"train": parts[0].n_rows, "validation": parts[1].n_rows},
            "views_kept": views if isinstance(views, str) else ",".join(views),
            "views": view_counts(view[readable & kept]),
            "views_left_out": view_counts(view[readable & ~kept]),
            "copies": None if copies is None else copies.to_json()}


def _checkpoint_provenance(stores: list[FeatureStore], where: torch.device,
                           used: list[dict[str, Any]]) -> dict[str, Any]:
    """What the checkpoint records of the features it was trained on, and where: the first
    store's backbone, preprocessing and arithmetic (every store's are the same), and each
    store (``stores``)."""
    first = stores[0]
    provenance = {k: first.provenance.get(k) for k in
                  ("backbone", "preprocessing", "dtype", "precision", "split", "archive")}
    provenance["store_url"] = first.url
    provenance["device"] = where.type
    provenance["stores"] = used
    return provenance


def plot_curves(history: pd.DataFrame, path: str | os.PathLike) -> str:
    """Train and validation loss per epoch (and the learning rate), saved as PNG at ``path``."""
    from cxrdask.plots import curves_figure, save_figure

    return save_figure(curves_figure(history), path)


def train_task(store_url: str | list[str], storage_options, config: TrainConfig, out_dir: str) -> dict:
    """One head trained as a Dask task with one torch thread (a grid-search configuration, a
    study's head): what :func:`grid_search` tabulates."""
    torch.set_num_threads(1)
    result = train_head(store_url, config, out_dir, storage_options=storage_options,
                        progress=False, plot=False)
    return {"lr": config.lr, "weight_decay": config.weight_decay,
            "best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "seconds": result.seconds,
            "checkpoint": result.checkpoint}


def grid_search(
    store_url: str | Sequence[str],
    lrs=(1e-4, 3e-4, 1e-3),
    weight_decays=(0.0, 1e-5, 1e-4),
    *,
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike = "grid-out",
    client=None,
    storage_options: StorageOptions | None = None,
    progress: Progress = True,
    base: TrainConfig | None = None,
) -> pd.DataFrame:
    """Train one head per (learning rate, weight decay) as Dask tasks; keep the best.

    Each configuration is a ``train-trial`` task in the span ``cxrdask-grid-search <store>``.
    The store must be reachable from the workers (a shared disk or object storage).

    Parameters
    ----------
    store_url
        The feature store, or several (one head on all of them, as :func:`train_head`).
    lrs, weight_decays
        The grid.
    config
        The other training choices (:class:`TrainConfig` defaults if None). ``base=``, its
        old name, is deprecated.
    out_dir
        One folder per configuration, ``grid.csv``, ``grid.png`` (a heatmap) and the best
        checkpoint as ``head.pt``.
    client
        A Dask client; None runs on :func:`~cxrdask.runtime.cluster.session_client` (the current
        client, else a local cluster kept for the Python session).
    storage_options
        fsspec options.
    progress
        True: a progress bar; False: none; or an ``fsspec.callbacks.Callback`` of your own
        (:data:`cxrdask.progress.Progress`).

    Returns
    -------
    pandas.DataFrame
        Best validation loss per configuration, best first.
    """
    from distributed import as_completed, span

    from cxrdask.progress import progress_callback
    from cxrdask.runtime.cluster import session_client

    base = renamed("grid_search", "base", "config", base, config) or TrainConfig()
    urls = [store_url] if isinstance(store_url, str) else [str(u) for u in store_url]
    check_output_folder(str(out_dir), "the output folder",
                        {f"the store {k + 1}": url for k, url in enumerate(urls)})
    store_url = urls[0] if len(urls) == 1 else urls
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    configs = [replace(base, lr=float(lr), weight_decay=float(wd))
               for lr in lrs for wd in weight_decays]

    token = uuid.uuid4().hex
    name = "+".join(url.rstrip("/").rsplit("/", 1)[-1] for url in urls)

    def run(c) -> list[dict]:
        with span(f"cxrdask-grid-search {name}"):  # one span per call on the dashboard
            futures = [c.submit(train_task, store_url, storage_options, cfg,
                                str((out / f"lr{cfg.lr:g}_wd{cfg.weight_decay:g}").resolve()),
                                pure=False, key=f"train-trial-{i}-{token}")
                       for i, cfg in enumerate(configs)]
        rows = []
        with progress_callback(progress, len(futures), desc="grid", unit="config") as bar:
            for future in as_completed(futures):
                rows.append(future.result())
                bar.relative_update(1)
        return rows

    rows = run(client if client is not None else session_client())
    frame = pd.DataFrame(rows).sort_values("best_val_loss").reset_index(drop=True)
    frame.to_csv(out / "grid.csv", index=False)
    shutil.copyfile(frame.loc[0, "checkpoint"], out / "head.pt")
    plot_grid(frame, out / "grid.png")
    return frame


def plot_grid(frame: pd.DataFrame, path: str | os.PathLike) -> str:
    """Heatmap of best validation loss over learning rate x weight decay, saved at ``path``."""
    from cxrdask.plots import grid_figure, save_figure

    return save_figure(grid_figure(frame), path)


__all__ = [
    "TrainResult",
    "grid_search",
    "input_statistics",
    "plot_curves",
    "plot_grid",
    "train_head",
    "train_task",
]
