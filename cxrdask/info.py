"""``cxrdask info``: what a feature store or a head checkpoint holds, without importing torch.

Users ask this of a store while an extraction runs, or of a checkpoint someone sent them, so
it must answer in well under a second: a store is read through its small arrays and its
provenance; a checkpoint (torch's zip format) is read through a restricted unpickler that
keeps its plain values (config, provenance) and records each tensor's shape, never
importing torch or running any code from the file.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from cxrdask._fs import StorageOptions, filesystem
from cxrdask.store.copies import copies_phrase

# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of a checkpoint, known by its shape only."""

    shape: tuple[int, ...]

    def __repr__(self) -> str:
        return f"tensor{list(self.shape)}"


def _rebuild_tensor(storage, offset, size, *args) -> TensorInfo:
    return TensorInfo(tuple(int(n) for n in size))


class _StubType:
    """Stands in for torch classes named in the pickle (storage types, dtypes)."""

    def __init__(self, name: str):
        self.name = name


class _CheckpointUnpickler(pickle.Unpickler):
    """Loads the plain parts of a torch checkpoint; tensors become :class:`TensorInfo`."""

    _ALLOWED: ClassVar[dict] = {("collections", "OrderedDict"): OrderedDict}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch._utils" and name.startswith("_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" or module.startswith("torch."):
            return _StubType(f"{module}.{name}")
        raise pickle.UnpicklingError(f"{module}.{name} is not expected in a cxrdask checkpoint")

    def persistent_load(self, pid):
        return None  # tensor storages: their bytes are not read


def read_checkpoint_summary(path: str, storage_options: StorageOptions | None = None) -> dict:
    """The checkpoint's plain contents (format, config, input, provenance, epoch, val loss),
    tensors replaced by their shapes. Raises ``ValueError`` for a file that is not one."""
    fs, local = filesystem(path, storage_options)
    with fs.open(local, "rb") as handle:
        data = handle.read()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickled = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
            payload = _CheckpointUnpickler(io.BytesIO(archive.read(pickled))).load()
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"{path} is not a torch checkpoint file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "cxrdask-head":
        raise ValueError(f"{path} is a torch file but not a cxrdask head checkpoint")
    return payload


def describe_checkpoint(path: str, storage_options: StorageOptions | None = None) -> str:
    """Lines for ``cxrdask info HEAD.pt``: what the head was trained on and how."""
    payload = read_checkpoint_summary(path, storage_options)
    config, spec, provenance = payload["config"], payload["input"], payload["provenance"]
    backbone = provenance.get("backbone") or {}
    parameters = sum(_numel(v) for v in payload["state_dict"].values())
    lines = [
        f"head checkpoint {path} (format {payload['format']} v{payload['version']}, "
        f"cxrdask {payload.get('library_version', '?')})",
        f"  head: {spec['n_inputs']} inputs ({spec['feature_dim']} features + "
        f"{', '.join(spec['demographics']) or 'no demographics'}) -> "
        f"{len(payload['label_names'])} findings, {parameters:,} values",
        f"  best epoch {payload['epoch']}, validation loss {payload['val_loss']:.4f}",
        f"  trained: preset {config.get('preset')}, batch {config.get('batch_size')}, "
        f"lr {config.get('lr')}, weight decay {config.get('weight_decay')}, "
        f"epochs {config.get('epochs')}, seed {config.get('seed')}",
        f"  backbone: {backbone.get('name')} ({backbone.get('weights')})"
        + (f", sha256 {backbone['sha256'][:12]}…" if backbone.get("sha256") else ""),
        f"  preprocessing: {_preprocessing(provenance.get('preprocessing') or {})}",
    ]
    stores = provenance.get("stores") or []
    if not stores:  # a checkpoint from before heads recorded their stores
        lines.append(f"  features from: {provenance.get('store_url', '?')}")
    for each in stores:
        kept = ", ".join(f"{family} {n}" for family, n in each["views"].items() if n)
        left = ", ".join(f"{family} {n}" for family, n in each["views_left_out"].items() if n)
        lines.append(f"  features from: {each['url']} ({each['archive']}): "
                     f"{each['rows']['train']:,} training, {each['rows']['validation']:,} "
                     f"validation rows; views {each['views_kept']}: {kept or 'none'}"
                     + (f"; left out: {left}" if left else "")
                     + copies_phrase(each.get("copies")))
    return "\n".join(lines)


def _numel(value: Any) -> int:
    if isinstance(value, TensorInfo):
        count = 1
        for n in value.shape:
            count *= n
        return count
    return 0


def _preprocessing(pre: dict) -> str:
    if not pre:
        return "?"
    crop = pre.get("crop", "none")
    if crop != "none":
        fraction = pre.get("crop_fraction", 1.0)
        crop = f"crop {crop}" + (f" {fraction:.3g}" if fraction != 1.0 else "")
    return (f"{pre.get('size')} px, {pre.get('interpolation')}, {pre.get('channels')}, "
            + ("" if crop == "none" else f"{crop}, ") + f"flip {pre.get('flip')}")


# --------------------------------------------------------------------------- stores


def describe_store(url: str, storage_options: StorageOptions | None = None) -> str:
    """Lines for ``cxrdask info STORE``: shape, chunks, rows ok/failed/pending per split,
    provenance and size on disk. Reads only the small per-row arrays."""
    from cxrdask.archive.findings import MISSING
    from cxrdask.archive.splits import SPLIT_NAMES
    from cxrdask.store.features import STATUS_FAILED, STATUS_OK, STATUS_PENDING
    from cxrdask.store.pixels import open_any_store

    store = open_any_store(url, storage_options=storage_options)
    p = store.provenance
    status = store.read("status")
    split = store.read("split")
    done = store.done_chunks()
    pixels = p.get("kind") == "pixels"
    fs, path = filesystem(url, storage_options)
    size = fs.du(path, total=True)
    pre = p.get("preprocessing") or {}
    shape = (f"pixels: {store.n_rows} x {pre.get('size')}² uint8, {pre.get('interpolation')}, "
             f"{p.get('compression')}" if pixels
             else f"features: {store.n_rows} x {p['backbone']['feature_dim']} {p['dtype']}")
    lines = [
        f"{'pixel' if pixels else 'feature'} store {url} (format {p['format_version']}, "
        f"cxrdask {p.get('library_version')}, created {p.get('created')})",
        f"  {shape}, chunks of {store.chunk_rows} rows: {int(done.sum())} of {store.n_chunks} done"
        + (" (complete)" if done.all() else ""),
        f"  rows: {int((status == STATUS_OK).sum())} ok, {int((status == STATUS_FAILED).sum())} "
        f"failed, {int((status == STATUS_PENDING).sum())} pending",
    ]
    for code, name in enumerate(SPLIT_NAMES):
        mine = split == code
        lines.append(f"    {name:<10} {int(mine.sum()):>7} rows, "
                     f"{int((status[mine] == STATUS_OK).sum())} ok, "
                     f"{int((status[mine] == STATUS_FAILED).sum())} failed")
    lines.append(f"  split: {p.get('split', {}).get('description', '?')}")
    if not pixels:
        backbone = p["backbone"]
        lines += [
            f"  backbone: {backbone.get('name')} ({backbone.get('weights')})"
            + (f", sha256 {backbone['sha256'][:12]}…" if backbone.get("sha256") else "")
            + (f", pooling {backbone['pooling']}, {backbone['feature_dim']} features"
               if backbone.get("pooling") else ""),
            f"  engine: {p.get('engine', 'torch')}, precision {p.get('precision')}, "
            f"compile {p.get('compile')}",
            f"  preprocessing: {_preprocessing(pre)}",
        ]
    archive = p.get("source" if pixels else "archive") or {}
    if archive:
        kind = "synthetic archive" if archive.get("synthetic") else "archive"
        lines.append(f"  images: {kind.replace('archive', archive.get('kind', 'nih') + ' archive')}"
                     f" at {archive.get('root')}")
        if archive.get("pixels"):
            lines.append(f"  decoded images read from the pixel store {archive['pixels']['url']}")
    names = p.get("label_names") or []
    labels = store.read("labels")
    lines.append(f"  findings: {len(names)} ({', '.join(names)}); "
                 f"{float((labels == MISSING).mean()) if labels.size else 0.0:.1%} of labels missing")
    lines.append(f"  size on disk: {size / 1e6:,.1f} MB")
    if int((status == STATUS_FAILED).sum()):
        lines.append("  failed rows: FeatureStore.open(url).failures() lists them with reasons")
    return "\n".join(lines)


def describe_target(target: str, storage_options: StorageOptions | None = None) -> str:
    """A store (a folder or URL with ``zarr.json``) or a checkpoint file, whichever it is."""
    from cxrdask.errors import StoreError, StoreNotFoundError

    fs, path = filesystem(target, storage_options)
    if fs.isfile(path):
        try:
            return describe_checkpoint(target, storage_options)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
    if not fs.exists(path):
        raise StoreNotFoundError(f"no feature store or checkpoint at {target}")
    return describe_store(target, storage_options)


def environment_report() -> str:
    """Versions of the key dependencies, torch threads and CUDA devices (imports torch)."""
    import os
    import platform

    import dask
    import distributed
    import fsspec
    import numpy
    import pandas
    import torch
    import torchvision
    import zarr

    from cxrdask import __version__

    lines = [f"cxrdask {__version__} on Python {platform.python_version()} ({platform.machine()}, "
             f"{os.cpu_count()} cores)"]
    for module in (torch, torchvision, dask, distributed, zarr, fsspec, numpy, pandas):
        lines.append(f"  {module.__name__:<12} {module.__version__}")
    lines.append(f"  torch threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        lines += [f"  CUDA device {i}: {torch.cuda.get_device_name(i)}"
                  for i in range(torch.cuda.device_count())]
    else:
        lines.append("  CUDA devices: none")
    return "\n".join(lines)


__all__ = ["describe_checkpoint", "describe_store", "describe_target", "environment_report",
           "read_checkpoint_summary"]
