"""The ``openvino`` engine: the backbone's ONNX export compiled by Intel's OpenVINO for the CPU.

OpenVINO is maintained for exactly this job (CNN inference on CPUs): it fuses the network
into oneDNN kernels laid out for the CPU at hand and runs bf16 where the CPU computes it
natively (AVX-512-BF16, AMX), fp32 elsewhere. It starts from the same ONNX export the
``onnxruntime`` engine caches (:func:`~cxrdask.backbones.engines.onnxruntime.exported_onnx`),
so a worker that finds the export cached imports no torch; OpenVINO reads the cached file
in 0.2 s (converting it from memory took 0.7 s). Compiled models are cached by OpenVINO itself in
``$CXRDASK_CACHE_DIR/openvino`` (beside the ONNX exports), keyed by the model, the device
and the compile settings, so a later worker loads the compiled blob instead of compiling.

A compiled model is made per image shape at its first batch (or by ``warm``), for a fixed
batch of ``batch_size`` (shorter batches are padded by the runner, as for a trace), with
one execution stream per thread that calls it (a Dask worker's task threads; one outside
a worker), each stream on ``threads`` threads: the worker's threads each run their own infer
request at once, as they run their own ONNX Runtime call. More streams than callers would
leave OpenVINO's idle stream threads competing with the rest of the machine for its cores
(measured: a process that had run OpenVINO slowed the next extraction by 8%).

A core dependency (a 59 MB wheel): ``engine="auto"`` runs it for bf16 CPU jobs.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cxrdask.backbones.engines.onnxruntime import exported_onnx, onnx_cache_path
from cxrdask.backbones.spec import BackboneSpec
from cxrdask.errors import MissingExtraError
from cxrdask.runtime.cache import cache_root

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}


def openvino_cache_dir() -> str:
    """Where OpenVINO keeps compiled models (beside the ONNX exports)."""
    return str(cache_root() / "openvino")


class OpenVinoBackend:
    """The network as an OpenVINO model, compiled per image shape for ``batch_size`` images."""

    pads = True

    def __init__(self, model: Any, precision: str, batch_size: int, streams: int,
                 threads_per_stream: int = 1):
        import openvino as ov

        self.core = ov.Core()
        self.core.set_property({"CACHE_DIR": openvino_cache_dir()})
        self.model = model
        self.precision = precision
        self.batch_size = batch_size
        self.streams = max(1, streams)
        self.threads = self.streams * max(1, threads_per_stream)
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._lock = threading.Lock()
        self._requests = threading.local()

    def compiled_for(self, shape: tuple[int, int, int]) -> Any:
        """The model compiled for batches of ``(batch_size, *shape)`` (made at first use)."""
        with self._lock:
            compiled = self._compiled.get(shape)
            if compiled is None:
                model = self.model.clone()
                model.reshape([self.batch_size, *shape])
                settings = {
                    "INFERENCE_PRECISION_HINT": _PRECISION_HINT[self.precision],
                    "NUM_STREAMS": str(self.streams),
                    "INFERENCE_NUM_THREADS": str(self.threads),
                    "PERFORMANCE_HINT": "THROUGHPUT",
                    # Pinned, every process's streams land on the same first cores: two
                    # single-stream processes on 2 cores ran 5.4 images/s each, unpinned 10.9.
                    "ENABLE_CPU_PINNING": False,
                }
                compiled = _compile_once(self.core, model, settings)
                self._compiled[shape] = compiled
            return compiled

    def run(self, batch: Any) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            batch = batch.cpu().numpy()
        shape = tuple(batch.shape[1:])
        requests = self._requests.__dict__.setdefault("by_shape", {})
        request = requests.get(shape)
        if request is None:  # one infer request per thread and shape: they run side by side
            request = requests[shape] = self.compiled_for(shape).create_infer_request()
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def warm(self, shape: tuple[int, int, int]) -> None:
        self.compiled_for(shape)


def _compile_once(core: Any, model: Any, settings: dict[str, Any]) -> Any:
    """``model`` compiled, one process at a time per cache folder: worker processes that
    start together would each compile the same model and race writing its cached blob
    ("cannot set permissions: ... .blob"); under the lock the first compiles and caches it,
    and the others load the blob it wrote. Where the folder cannot hold a lock (read-only),
    the model is compiled without the cache."""
    from filelock import FileLock

    folder = Path(openvino_cache_dir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / "compile.lock")
        with lock:
            return core.compile_model(model, "CPU", settings)
    except OSError:
        import openvino as ov

        return ov.Core().compile_model(model, "CPU", settings)


def open_backend(spec: BackboneSpec, *, device: Any, precision: str, compile: bool,
                 batch_size: int, threads: int) -> OpenVinoBackend:
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingExtraError("the openvino engine needs: pip install 'cxrdask[openvino]' "
                                "(or pip install openvino)") from exc
    return OpenVinoBackend(_onnx_model(ov, spec), precision, batch_size, _callers(), threads)


def _onnx_model(ov: Any, spec: BackboneSpec) -> Any:
    """``spec``'s network as an OpenVINO model: OpenVINO's ONNX frontend reads the cached
    export's file (0.19 s), exported first where it is not cached yet; where it cannot be
    cached (weights from a file, an unwritable cache folder) the exported bytes are
    converted from memory (0.7 s). A cached export is read once, by OpenVINO."""
    cached = onnx_cache_path(spec)
    if cached is None or not cached.is_file():
        data = exported_onnx(spec)  # exported now, and cached where it can be
        if cached is None or not cached.is_file():
            return ov.convert_model(io.BytesIO(data))
    return ov.Core().read_model(str(cached))


def _callers() -> int:
    """How many threads will call the model at once: a Dask worker's task threads, else one."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


__all__ = ["OpenVinoBackend", "open_backend", "openvino_cache_dir"]
