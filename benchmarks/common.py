"""What the benchmark scripts share: the machine's description, tables, JSON and plots, process
memory, and the measuring code several scripts time with (synthetic archives of NIH-size
PNGs or CheXpert's JPEGs, the bare backbone's and the decoder's rates on every core at once).
Run every script from the repository's root as ``python -m benchmarks.NAME``."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from cxrdask.backbones.spec import BackboneSpec

if TYPE_CHECKING:
    from cxrdask.backbones.runner import BackboneRunner


def machine() -> str:
    """CPU model, whether it computes bf16 natively (and by which instructions), cores,
    memory and GPU, for the record beside every figure."""
    from cxrdask.backbones.hardware import native_bf16_flags

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    except OSError:
        pass
    native = native_bf16_flags()
    cpu = (f"{model or platform.processor() or platform.machine()} "
           f"({'native bf16: ' + ', '.join(native) if native else 'no native bf16'})")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {gpu}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    On Linux from ``/proc/self/status`` (VmHWM): ``ru_maxrss`` is carried over ``exec``,
    so a benchmark's child process would report its parent's peak when that is higher.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(rows: list[dict], header: str) -> str:
    """A Markdown table of ``rows`` (numbers rounded), under a header line."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = [header, "", "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def save_results(stem: str, rows: list[dict], header: str, arguments: dict,
                 plot_column: str | None = None) -> None:
    """Write ``stem.json`` (rows, machine, command) and ``stem.png`` (a bar chart)."""
    path = Path(stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        # A figure measured on uncommitted changes to the code says so ("abc1234-dirty");
        # edited docs and results do not count.
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "cxrdask", "benchmarks",
                                  ":(exclude)benchmarks/results"], check=False).returncode
        if commit and changed:
            commit += "-dirty"
    except OSError:
        commit = ""
    path.with_suffix(".json").write_text(json.dumps(
        {"header": header, "machine": machine(), "arguments": arguments, "commit": commit,
         "rows": rows}, indent=2, default=str))
    if plot_column:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [r for r in rows if isinstance(r.get(plot_column), (int, float))]
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(shown) + 1.5))
        ax.barh([r["what"] for r in shown], [r[plot_column] for r in shown])
        ax.invert_yaxis()
        ax.set_xlabel(plot_column)
        ax.set_title(header, fontsize=9)
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=100)
        plt.close(fig)


class ProcessTreeMonitor:
    """CPU seconds and peak resident memory of this process and all its descendants.

    Memory is counted above this process's own resident size at the start, so models the
    benchmark built earlier do not count against the run being measured.

    A background thread samples the tree every ``interval`` seconds (worker processes,
    DataLoader workers and Spark's JVM and Python workers included); CPU time of a process
    that ends between two samples is counted up to its last sample.
    """

    def __init__(self, interval: float = 0.2):
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.peak_rss_mb = 0.0
        self._first: dict[tuple, float] = {}
        self._last: dict[tuple, float] = {}
        self._started = False
        self._baseline = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        root = self._psutil.Process()
        rss = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                with process.oneshot():
                    cpu = process.cpu_times()
                    memory = process.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            key = (process.pid, process.create_time())
            self._first.setdefault(key, 0.0 if self._started else cpu.user + cpu.system)
            self._last[key] = cpu.user + cpu.system
            rss += memory
        if not self._started:
            self._baseline = root.memory_info().rss
        self.peak_rss_mb = max(self.peak_rss_mb, (rss - self._baseline) / 2**20)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ProcessTreeMonitor:
        self._sample()  # processes already running count from now on
        self._started = True
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self._last[k] - self._first[k] for k in self._last)


def disk_bytes(path: str | os.PathLike) -> int:
    """Bytes of all files under ``path`` (a file or a folder)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------- measuring, shared


SPEC = BackboneSpec("resnet50", "random", 0)


class Config(NamedTuple):
    """One way of running the backbone: precision, torch.compile or not, engine."""

    precision: str
    compile: bool = False
    engine: str = "torch"

    @property
    def name(self) -> str:
        prefix = "compile+" if self.compile else "" if self.engine == "torch" else self.engine + " "
        return prefix + self.precision

    @property
    def eager_torch(self) -> bool:
        return not self.compile and self.engine == "torch"


def archive_for(path: Path, n: int, size: int, replicate: int = 1):
    """Reuse a synthetic archive of the right size, else write one. With ``replicate`` K,
    every image is listed K times under new names (hard links): a fast GPU needs many
    rows, and rendering real-size PNGs is slow. Every row is still read and decoded."""
    from cxrdask.archive.kinds.nih import read_metadata
    from cxrdask.archive.synthetic import make_archive

    csv = path / "Data_Entry_2017.csv"
    if (path / "cxrdask-synthetic.json").exists() \
            and len(read_metadata(str(csv), max_age=10_000)) == n * replicate:
        return str(path), str(csv)
    shutil.rmtree(path, ignore_errors=True)
    archive = make_archive(str(path), n=n, size=size, seed=0, progress=True)
    print(f"synthetic archive: {archive.images_per_second:.1f} images/s written")
    if replicate > 1:
        replicate_archive(path, replicate)
    return archive.root, archive.metadata_url


def jpeg_archive_for(path: Path, n: int, size: int) -> tuple[str, list[str]]:
    """Reuse a synthetic CheXpert-layout archive (gray JPEGs) of ``n`` images, else write
    one: its folder and its images' paths. cxrdask finds its kind from its own files."""
    from cxrdask.archive.synthetic import make_archive

    root = path / "CheXpert-v1.0-small"
    images = sorted(str(p) for p in root.rglob("*.jpg"))
    if (root / "cxrdask-synthetic.json").exists() and len(images) == n:
        return str(root), images
    shutil.rmtree(path, ignore_errors=True)
    archive = make_archive(str(root), n=n, size=size, seed=0, layout="chexpert", progress=True)
    print(f"synthetic archive: {archive.images_per_second:.1f} images/s written")
    return archive.root, sorted(str(p) for p in root.rglob("*.jpg"))


def replicate_archive(path: Path, copies: int) -> None:
    """List each image ``copies`` times: copy k of ``00000001_000.png`` is a hard link named
    for patient ``1 + k * 10**7``; the metadata CSV is rewritten with the new rows."""
    import pandas as pd

    csv = path / "Data_Entry_2017.csv"
    frame = pd.read_csv(csv)
    images = next(p.parent for p in path.glob("**/images/*.png"))  # images/ or images_001/images/
    parts = []
    for k in range(copies):
        part = frame.copy()
        if k:
            part["Patient ID"] = part["Patient ID"] + k * 10**7
            part["Image Index"] = [f"{p:08d}_{name.split('_')[1]}" for p, name
                                   in zip(part["Patient ID"], frame["Image Index"], strict=True)]
            for old, new in zip(frame["Image Index"], part["Image Index"], strict=True):
                os.link(images / old, images / new)
        parts.append(part)
    pd.concat(parts).to_csv(csv, index=False)


def first_call(device: str, config: Config, batch: int,
               size: int = 224) -> tuple[BackboneRunner, np.ndarray, float]:
    """The bare backbone (one CPU thread, or the GPU), a random decoded batch, and the
    seconds of its first call on it (the compilation, if any)."""
    import torch

    from cxrdask.backbones.runner import BackboneRunner

    torch.set_num_threads(1)
    runner = BackboneRunner.build(SPEC, device, config.precision, config.compile, batch,
                                  config.engine, threads=1)  # ONNX Runtime's one thread too
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    start = time.perf_counter()
    runner(x)
    return runner, x, time.perf_counter() - start


def steady_rate(runner: BackboneRunner, x: np.ndarray, seconds: float) -> float:
    """Images/s of ``runner`` called on ``x`` again and again for ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner(x)
        done += len(x)
    return done / (time.perf_counter() - start)


def forward_rate(device: str, config: Config, batch: int, seconds: float) -> float:
    """Images/s of the bare backbone (one CPU thread, or the GPU) on random decoded tensors.

    On the CPU it is measured in a process of its own: an engine's threads outlive its
    figure in the measuring process (OpenVINO's streams kept this process's later
    contenders 8% slower), and every engine must leave the machine as it found it."""
    if device == "cpu":
        return rates_all_cores("backbone", 1, seconds, config, batch)
    runner, x, _ = first_call(device, config, batch)  # warm-up (and compilation)
    runner(x)
    return steady_rate(runner, x, seconds)


def forward_rate_on_device(config: Config, batch: int, seconds: float) -> float:
    """Images/s of the network alone on a GPU: the batch already on the device (uint8
    normalised there), nothing copied: the bound any pipeline feeding it can reach."""
    import torch

    from cxrdask.backbones.runner import BackboneRunner
    from cxrdask.imaging.model_input import DeviceInput
    from cxrdask.imaging.preprocessing import Preprocessing

    runner = BackboneRunner.build(SPEC, "cuda", config.precision, config.compile, batch, config.engine)
    converter = DeviceInput(torch.device("cuda"), Preprocessing())
    pixels = torch.randint(0, 255, (batch, 224, 224), dtype=torch.uint8, device="cuda")
    x = converter.normalise(pixels)
    for _ in range(3):
        runner.features(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        runner.features(x)
        done += batch
    return done / (time.perf_counter() - start)


def _decode_file(args: tuple[str, bool]) -> None:
    url, resize = args
    from cxrdask.imaging.decode import decode_gray, resize_gray
    from cxrdask.imaging.preprocessing import Preprocessing

    with open(url, "rb") as handle:
        gray, _ = decode_gray(handle.read(), os.path.basename(url))
    if resize:
        resize_gray(gray, Preprocessing())
    else:
        np.asarray(gray)


def decode_bound(urls: list[str], processes: int, resize: bool) -> float:
    """Images/s of read + decode (+ Pillow resize) in a pool of ``processes`` processes:
    the most a node's cores can feed a GPU, whatever the worker layout."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_decode_file, [(u, resize) for u in urls[:processes * 2]])  # start-up
        start = time.perf_counter()
        pool.map(_decode_file, [(u, resize) for u in urls], chunksize=8)
        return len(urls) / (time.perf_counter() - start)


def decode_rate(urls: list[str]) -> float:
    """Images/s of read + decode + resize + normalise on one thread."""
    from cxrdask.imaging.decode import preprocess_bytes

    start = time.perf_counter()
    for url in urls:
        with open(url, "rb") as handle:
            preprocess_bytes(handle.read(), os.path.basename(url))
    return len(urls) / (time.perf_counter() - start)


def _rate_at_once(kind: str, config: Config | None, batch: int, paths: list[str], seconds: float,
                  barrier) -> float:
    """One of :func:`rates_all_cores`' processes: get ready, wait for the others, measure."""
    if kind == "backbone":
        assert config is not None
        runner, x, _ = first_call("cpu", config, batch)
        runner(x)
        barrier.wait()
        return steady_rate(runner, x, seconds)
    decode_rate(paths[:2])  # the decoder's first call
    barrier.wait()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        decode_rate(paths)  # each pass reads, decodes and preprocesses every path
        done += len(paths)
    return done / (time.perf_counter() - start)


def rates_all_cores(kind: str, cores: int, seconds: float, config: Config | None = None,
                    batch: int = 8, paths: list[str] | None = None) -> float:
    """Summed images/s of ``cores`` single-threaded processes running at the same time: the
    backbone (``kind="backbone"``, eager, ``config``'s engine and precision) or read +
    decode + preprocess of ``paths`` (``"decode"``).

    A bound computed from one thread's rate times the cores assumes the cores scale
    linearly; on a VM two vCPUs can be one core's hyperthreads, or share caches and memory
    bandwidth (measured here: two ONNX Runtime processes at once each ran 0.80-0.90 of one
    alone). Measured with every core busy, the bound is what the machine can do at once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(cores)
    with ProcessPoolExecutor(cores, mp_context=context) as pool:
        rates = [pool.submit(_rate_at_once, kind, config, batch, paths or [], seconds, barrier)
                 for _ in range(cores)]
        return sum(rate.result() for rate in rates)
