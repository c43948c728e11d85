"""The one place an extraction's ``"auto"`` choices become concrete values.

:func:`resolve` is a pure function: from the options (:class:`~cxrdask.config.ExtractConfig`),
the facts each worker reports (:class:`WorkerFacts`: its device, whether it computes bf16
natively, what is installed) and the job's size, it returns a frozen :class:`Resolved`
(precision, engine, compile; never ``"auto"``) with the reason for each. The run records it
in the store; the plan's ``describe()`` and the engines' table (:data:`ENGINE_CHOICES`) read
the same rules. Nothing below this module decides an ``auto``.

The rules, measured (``benchmarks/bench_extract.py``, ``bench_peers``, ``bench_compile``;
see ``docs/benchmarks.md``):

- precision: bf16 where every worker computes it natively (CPUs with AVX-512-BF16 or AMX,
  GPUs), else fp32 (bf16 is emulated, and slower, elsewhere);
- engine: the first row of :data:`ENGINE_CHOICES` whose condition holds;
- compile: only PyTorch fp32 on CPU workers, when each worker thread has
  :data:`~cxrdask.config.COMPILE_AUTO_MIN_IMAGES` images or more (:func:`compile_pays_off`),
  and every worker has the C++ compiler Inductor needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cxrdask.config import COMPILE_AUTO_MIN_IMAGES, OPENVINO_AUTO_MIN_IMAGES, ExtractConfig

ConcretePrecision = Literal["fp32", "bf16", "fp16"]
ConcreteEngine = Literal["torch", "onnxruntime", "openvino"]


@dataclass(frozen=True)
class WorkerFacts:
    """What one worker reports (:func:`cxrdask.extract.tasks.worker_hardware`)."""

    device: str  # where its backbone runs: "cpu" or "cuda"
    precision: str  # what precision "auto" means there: "bf16" where native, else "fp32"
    onnxruntime: bool
    openvino: bool
    compiler: bool

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> WorkerFacts:
        return cls(device=answer["device"], precision=answer["precision"],
                   onnxruntime=bool(answer["onnxruntime"]),
                   openvino=bool(answer["openvino"]), compiler=bool(answer["compiler"]))


@dataclass(frozen=True)
class Resolved:
    """An extraction's concrete arithmetic, each with why it was chosen."""

    precision: ConcretePrecision
    engine: ConcreteEngine
    compile: bool
    why: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "engine": self.engine, "compile": self.compile,
                "why": list(self.why)}


@dataclass(frozen=True)
class _Job:
    """What the engine rules look at: the precision (concrete), compile as asked, the
    workers' facts and the images per worker thread (None: not known yet)."""

    precision: str
    compile: bool | str
    workers: tuple[WorkerFacts, ...]
    images_per_thread: float | None

    @property
    def all_cpu(self) -> bool:
        return bool(self.workers) and all(w.device == "cpu" for w in self.workers)


@dataclass(frozen=True)
class EngineChoice:
    """One row of the engine table: ``engine`` where ``when`` (in words) holds."""

    engine: ConcreteEngine
    when: str
    holds: Callable[[_Job], bool]


#: What ``engine="auto"`` runs: the first row whose condition holds.
ENGINE_CHOICES: tuple[EngineChoice, ...] = (
    EngineChoice(
        "onnxruntime", "the backbone runs fp32 on CPU workers that have it installed "
        "(1.3-1.6x eager PyTorch fp32 on CPUs without native bf16)",
        lambda job: (job.all_cpu and job.precision == "fp32" and job.compile is not True
                     and all(w.onnxruntime for w in job.workers))),
    EngineChoice(
        "openvino", "it runs bf16 on CPU workers that have it installed and each worker "
        f"thread gets {OPENVINO_AUTO_MIN_IMAGES:,} images or more (1.3x eager PyTorch bf16; "
        "3.1x on CPUs with AMX)",
        lambda job: (job.all_cpu and job.precision == "bf16" and job.compile is not True
                     and all(w.openvino for w in job.workers)
                     and job.images_per_thread is not None
                     and job.images_per_thread >= OPENVINO_AUTO_MIN_IMAGES)),
    EngineChoice("torch", "everywhere else (GPUs, fp16, compile)", lambda job: True),
)


def compile_pays_off(images: float, worker_threads: int, devices: set[str], engine: str,
                     precision: str) -> bool:
    """What ``compile="auto"`` decides: compile only where it was measured to be repaid
    (``benchmarks/bench_compile.py``): an fp32 torch backbone on CPU workers, when each worker
    thread has at least :data:`~cxrdask.config.COMPILE_AUTO_MIN_IMAGES` images. A small job
    never waits for a compile; bf16 on the CPU ran no faster compiled; GPUs are compiled only
    when asked (``compile=True``): not measured there."""
    return (engine == "torch" and devices == {"cpu"} and precision == "fp32"
            and images >= COMPILE_AUTO_MIN_IMAGES * max(worker_threads, 1))


def resolve(config: ExtractConfig, workers: Sequence[WorkerFacts], images: int | None,
            worker_threads: int) -> Resolved:
    """``config``'s precision, engine and compile made concrete for ``images`` images (None:
    not known yet, as for a local cluster's layout) on ``workers`` with ``worker_threads``
    threads in all. With no worker known: fp32 eager PyTorch, uncompiled. Values the config
    gives are kept as given."""
    workers = tuple(workers)
    why: list[str] = []
    precision = config.precision
    if precision == "auto":
        native = bool(workers) and all(w.precision == "bf16" for w in workers)
        precision = "bf16" if native else "fp32"
        why.append("precision bf16: every worker computes bf16 natively" if native else
                   "precision fp32: not every worker computes bf16 natively")
    per_thread = None if images is None else images / max(worker_threads, 1)
    job = _Job(precision, config.compile, workers, per_thread)
    engine = config.engine
    if engine == "auto":
        choice = next(row for row in ENGINE_CHOICES if row.holds(job))
        engine = choice.engine
        why.append(f"engine {engine}: {choice.when}")
    compile = config.compile
    if compile == "auto":
        devices = {w.device for w in workers}
        compile = (per_thread is not None and bool(workers) and all(w.compiler for w in workers)
                   and compile_pays_off(per_thread, 1, devices, engine, precision))
        if compile:
            why.append(f"compiled: PyTorch fp32 on CPU workers, each thread with "
                       f"{COMPILE_AUTO_MIN_IMAGES:,} images or more")
    return Resolved(precision, engine, bool(compile), tuple(why))


def describe_auto_engine() -> str:
    """What ``engine="auto"`` means, in words (for a plan's description)."""
    return "; ".join(f"{row.engine} where {row.when}" if row.engine != "torch"
                     else f"else {row.engine}" for row in ENGINE_CHOICES)


def local_facts(config: ExtractConfig) -> WorkerFacts:
    """This machine's facts as a worker started here would report them, told without
    importing torch (a machine that may have a GPU is answered ``cuda`` unless the backbone
    is asked for on the CPU): what a local cluster's layout is chosen from."""
    from cxrdask.backbones.engines import CPU_ENGINES
    from cxrdask.backbones.hardware import (
        cpu_auto_precision,
        has_no_gpu,
        onnxruntime_installed,
        openvino_installed,
    )

    on_cpu = (config.engine in CPU_ENGINES or config.device == "cpu"
              or (config.device == "auto" and has_no_gpu()))
    return WorkerFacts(device="cpu" if on_cpu else "cuda",
                       precision=cpu_auto_precision() if on_cpu else "bf16",
                       onnxruntime=onnxruntime_installed(), openvino=openvino_installed(),
                       compiler=False)


def local_engine(config: ExtractConfig) -> ConcreteEngine:
    """What ``config``'s engine will be on workers started on this machine, before the job's
    size is known (so never an OpenVINO chosen for size): a local cluster's layout
    depends on it (ONNX Runtime runs best as one process with a thread per core)."""
    return resolve(config, [local_facts(config)], None, 1).engine


__all__ = ["ENGINE_CHOICES", "EngineChoice", "Resolved", "WorkerFacts", "compile_pays_off",
           "describe_auto_engine", "local_engine", "local_facts", "resolve"]
