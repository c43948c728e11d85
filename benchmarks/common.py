"""Helpers shared by the benchmark scripts: machine description, tables, JSON and plots."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import threading
from pathlib import Path


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

