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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .backbone_spec import BackboneSpec
from .errors import MissingExtraError

if TYPE_CHECKING:
    from torch import nn

#: Bumped whenever :func:`export_onnx` changes what it writes (opset, names, axes).
EXPORT_FORMAT = 1


def onnx_cache_dir() -> Path:
    """Where exported models are kept (see the module's docstring)."""
    root = os.getenv("CXRDASK_CACHE_DIR")
    if not root:
        root = os.path.join(os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "cxrdask")
    return Path(root) / "onnx"


def onnx_cache_path(spec: BackboneSpec) -> Path | None:
    """The cache file of ``spec``'s export, or None where it is not cached (weights from a
    file). The name hashes everything the exported bytes depend on: network, weights and
    their seed, torch's version (the exporter) and :data:`EXPORT_FORMAT`."""
    if spec.kind == "file":
        return None
    import torch

    key = json.dumps({"name": spec.name, "weights": spec.weights,
                      "seed": spec.seed if spec.kind == "random" else None,
                      "torch": torch.__version__, "format": EXPORT_FORMAT}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return onnx_cache_dir() / f"{spec.name}-{digest}.onnx"


def export_onnx(model: nn.Module) -> bytes:
    """``model`` exported to ONNX in memory (input ``images``, any batch and image size)."""
    import torch

    buffer = io.BytesIO()
    example = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(model, (example,), buffer,  # type: ignore[arg-type]
                      input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                    "features": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``, never seen half written; an unwritable cache is skipped (the
    next worker exports again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def onnx_session(spec: BackboneSpec, build: Callable[[BackboneSpec], nn.Module], threads: int):
    """An ONNX Runtime CPU session of ``spec``'s network on ``threads`` threads: the cached
    export where there is one that loads, else ``build(spec)`` exported (and cached)."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("the onnxruntime engine needs: pip install onnx onnxruntime") from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    def session(data: bytes):
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    path = onnx_cache_path(spec)
    if path is not None and path.is_file():
        try:
            return session(path.read_bytes())
        except Exception:  # truncated or foreign file: export it again
            pass
    data = export_onnx(build(spec))
    loaded = session(data)
    if path is not None:
        _write_atomically(path, data)
    return loaded


__all__ = ["EXPORT_FORMAT", "export_onnx", "onnx_cache_dir", "onnx_cache_path", "onnx_session"]
