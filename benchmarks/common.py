"""Helpers shared by the benchmark scripts: machine description, tables, JSON and plots."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
from pathlib import Path


def machine() -> str:
    """CPU model, cores, memory and GPU, for the record beside every figure."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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
    """Peak resident memory of this process so far, in MB."""
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
