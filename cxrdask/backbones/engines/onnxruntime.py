"""The backbone as an ONNX Runtime session (CPU, fp32), its export cached on disk.

Exporting ResNet50 to ONNX takes 2-3 s of a worker's start on a 2-core CPU, every time a
worker starts; the exported model depends only on the network, its weights and the
exporter, so it is written once to a cache folder and read back by every later worker
(a file read instead of an export). Weights from a ``.pth`` file are exported every time:
a file can change under the same name, and hashing it costs about what the export does.

The cache folder is ``$CXRDASK_CACHE_DIR/onnx`` when that variable is set, else
``$XDG_CACHE_HOME/cxrdask/onnx`` (``~/.cache/cxrdask/onnx``). Files are written to a
temporary name and renamed into place, so two workers exporting at once never leave a
partial model; one that ONNX Runtime cannot load is exported again and replaced.

A worker that finds its export cached never imports torch (2-3 s of a cold start on one
core): :class:`OnnxBackend` reads the file into a session, and the extraction hands it
inputs normalised with NumPy (:class:`~cxrdask.imaging.host_input.HostInput`). Only an export
(the first run on a machine, or ``.pth`` weights) builds the network with torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrdask.backbones.spec import BackboneSpec
from cxrdask.errors import MissingExtraError
from cxrdask.runtime.cache import cache_root

if TYPE_CHECKING:
    from torch import nn

#: Bumped whenever :func:`export_onnx` changes what it writes (opset, names, axes).
EXPORT_FORMAT = 1

def onnx_cache_dir() -> Path:
    """Where exported models are kept (see the module's docstring)."""
    return cache_root() / "onnx"


def onnx_cache_path(spec: BackboneSpec) -> Path | None:
    """The cache file of ``spec``'s export, or None where it is not cached (weights from a
    file). The name hashes everything the exported bytes depend on: network, weights and
    their seed, torch's version (the exporter) and :data:`EXPORT_FORMAT`."""
    if spec.kind == "file":
        return None
    facts = {"name": spec.name, "weights": spec.weights,
             "seed": spec.seed if spec.kind == "random" else None,
             "torch": _torch_version(), "format": EXPORT_FORMAT}
    if spec.is_hf:  # a folder's weights by their sha256, and the embedding taken
        identity = spec.identity()
        facts.update(sha256=identity.get("sha256"), pooling=identity["pooling"])
    key = json.dumps(facts, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "-", spec.name).strip("-")[-80:]  # timm:x, hf:/a/b
    return onnx_cache_dir() / f"{stem}-{digest}.onnx"


@functools.cache
def _torch_version() -> str:
    """The installed torch's version (the exporter's), read from its package metadata: a
    cache hit must not import torch to name the file."""
    return importlib.metadata.version("torch")


def export_onnx(model: nn.Module, channels: int = 3, size: int | None = None) -> bytes:
    """``model`` exported to ONNX in memory (input ``images`` of ``channels`` channels, any
    batch size; any image size, or ``size`` only: a transformer's position embeddings are
    traced for the size it takes)."""
    import torch

    buffer = io.BytesIO()
    example = torch.zeros(1, channels, size or 224, size or 224)
    images_axes = {0: "batch"} if size else {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # a transformer's shape checks, traced as constants
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), buffer,  # type: ignore[arg-type]
                          input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": images_axes, "features": {0: "batch"}},
                          dynamo=False)
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``, never seen half written; an unwritable cache is skipped (the
    next worker exports again)."""
    temporary = _temporary_beside(path)
    if temporary is None:
        return
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def onnx_session(spec: BackboneSpec, threads: int):
    """An ONNX Runtime CPU session of ``spec``'s network on ``threads`` threads.

    From the fastest cached file that loads: ONNX Runtime's optimized graph for this CPU
    (made with the first session here), else the portable export, else the network exported
    now (:func:`exported_onnx`). Files are cached as they are made; none are for ``.pth``
    weights.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("the onnxruntime engine needs: pip install onnx onnxruntime") from exc
    path = onnx_cache_path(spec)
    optimized = optimized_cache_path(path) if path is not None else None
    for source, optimize in ((optimized, False), (path, True)):
        if source is not None and source.is_file():
            try:
                return _session(source.read_bytes(), threads, optimize, optimized)
            except Exception:  # truncated or foreign file: the next source, or export again
                pass
    data = exported_onnx(spec, reuse=False)
    return _session(data, threads, True, optimized)


def exported_onnx(spec: BackboneSpec, reuse: bool = True) -> bytes:
    """The ONNX export of ``spec``'s network: the cached file where there is one (and
    ``reuse``), else the network built (:func:`cxrdask.backbones.build.build_backbone`,
    imported with torch only then), exported now and cached. What the ONNX Runtime and
    OpenVINO engines both start from."""
    path = onnx_cache_path(spec)
    if reuse and path is not None and path.is_file():
        return path.read_bytes()
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError as exc:
        raise MissingExtraError("exporting the backbone to ONNX needs: pip install onnx") from exc
    from cxrdask.backbones.build import build_backbone

    size = spec.preprocessing()["size"] if spec.takes_tokens else None
    data = export_onnx(build_backbone(spec), spec.in_channels, size)
    if path is not None:
        _write_atomically(path, data)
    return data


def optimized_cache_path(export: Path) -> Path:
    """Where ONNX Runtime's optimized graph of the cached ``export`` is kept for this CPU.

    Its layout optimizations (NCHWc blocks for the CPU's vector width) are specific to the
    CPU, so the name hashes ONNX Runtime's version and the CPU's model and flags: a cache
    folder shared by unlike machines keeps one file per kind. Loading it skips the graph
    optimizations (ResNet50, one core: 0.07 against 0.30-0.37 s; same features)."""
    import onnxruntime

    key = json.dumps({"export": export.name, "onnxruntime": onnxruntime.__version__,
                      "cpu": _cpu_identity()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return export.with_name(f"{export.stem}.ort-{digest}.onnx")


@functools.cache
def _cpu_identity() -> str:
    """The CPU's architecture, model and instruction-set flags (Linux's /proc/cpuinfo)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name in ("model name", "flags", "Features", "CPU part") and name not in fields:
                fields[name] = " ".join(sorted(value.split())) if name != "model name" else value.strip()
    return json.dumps({"machine": platform.machine(), "processor": platform.processor(), **fields},
                      sort_keys=True)


def _session(data: bytes, threads: int, optimize: bool, save_optimized: Path | None):
    """A CPU session of the model ``data`` on ``threads`` threads. ``optimize``: run ONNX
    Runtime's graph optimizations (all levels) and, where ``save_optimized`` is given, keep
    the optimized graph there (atomically); else load ``data`` as it is, already optimized."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    temporary = _temporary_beside(save_optimized) if save_optimized is not None else None
    if temporary is None:
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    options.optimized_model_filepath = str(temporary)
    options.log_severity_level = 3  # not the warning that the saved graph suits this CPU only
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        os.replace(temporary, save_optimized)  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return session


def _temporary_beside(path: Path) -> Path | None:
    """A new empty file's path in ``path``'s folder (made if need be), or None where that
    folder cannot be written (the cache is then skipped)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return None
    os.close(handle)
    return Path(temporary)


class OnnxBackend:
    """A frozen backbone on ONNX Runtime (CPU, fp32): float32 batches in, features out.

    Its session comes from :func:`onnx_session` (the cached export, read without importing
    torch: see the module's docstring). One session serves all of a worker's threads:
    ``InferenceSession.run`` is thread-safe, and each call runs on the intra-op threads the
    session was made with. Its first batch runs as fast as the next, so there is nothing to
    warm."""

    pads = False

    def __init__(self, session):
        self.session = session

    def run(self, batch) -> np.ndarray:
        """Features (float32, ``(B, feature_dim)``) of a float32 ``(B, 3, H, W)`` batch
        (a tensor is brought to the host first)."""
        if not isinstance(batch, np.ndarray):
            batch = batch.cpu().numpy()
        return self.session.run(None, {"images": np.ascontiguousarray(batch, np.float32)})[0]

    def warm(self, shape: tuple[int, int, int]) -> None:
        return None


def open_backend(spec: BackboneSpec, *, device, precision: str, compile: bool,
                 batch_size: int, threads: int) -> OnnxBackend:
    return OnnxBackend(onnx_session(spec, threads))


__all__ = ["EXPORT_FORMAT", "OnnxBackend", "export_onnx", "exported_onnx", "onnx_cache_dir",
           "onnx_cache_path", "onnx_session", "open_backend", "optimized_cache_path"]
