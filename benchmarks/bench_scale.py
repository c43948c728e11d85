"""How the costs around extraction grow with the archive's size N (issue: archive scale).

For each N (1,000, 10,000 and 112,120 by default) this writes an archive of the real
layout (NIH's CSV and official lists, images in folders of 10,000; each image a tiny
placeholder PNG, since only listing and bookkeeping are timed here) and a complete
synthetic feature store of N rows, then times each stage that does not touch pixels:

- read and validate the metadata CSV; locate the images (one listing); assign the
  official split; create a store of N rows (metadata, row arrays, chunk grid);
- the resume check of a finished store (open it, check its settings, read its done markers);
- ``cxrdask info`` on the store; ``FeatureStore.open`` + ``table()``;
- one training epoch over the training split (read lazily), one evaluation pass (no
  intervals);

with the process's peak RSS after each N. The log-log slope of each stage's seconds over N
is fitted (1.0 = linear). Extraction itself (graph submission, per-task overhead at
112,120 rows) is not timed here.

    python -m benchmarks.bench_scale                          # 1,000, 10,000 and 112,120
    python -m benchmarks.bench_scale --sizes 1000,2000 --out /tmp/scale   # a quick check
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script (python benchmarks/NAME.py): find the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, peak_rss_mb, save_results, table

PLACEHOLDER_PNG = bytes.fromhex(  # a valid 1x1 gray PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c6360000000020001e221bc330000000049454e44ae426082")


def write_layout(root: Path, n: int) -> str:
    """NIH's files for ``n`` images: the CSV, the official lists, placeholder PNGs."""
    from cxrdask.synthetic import format_csv, image_folder, make_metadata, official_lists

    frame = make_metadata(n, seed=0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Data_Entry_2017.csv").write_text(format_csv(frame))
    train_val, test = official_lists(frame, seed=0)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    for position, name in enumerate(frame["image_index"]):
        folder = root / image_folder(position)
        if position % 10_000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(PLACEHOLDER_PNG)
    return str(root / "Data_Entry_2017.csv")


def timed(stages: dict, name: str, work):
    started = time.perf_counter()
    result = work()
    stages[name] = time.perf_counter() - started
    return result


def measure(n: int, directory: Path) -> dict:
    from cxrdask.evaluation import evaluate
    from cxrdask.extract import prepare_rows
    from cxrdask.imaging import Preprocessing
    from cxrdask.info import describe_store
    from cxrdask.metadata import locate_images, read_metadata
    from cxrdask.store import FeatureStore
    from cxrdask.testing import make_feature_store
    from cxrdask.train import TrainConfig, train_head

    root = directory / f"archive_{n}"
    csv = write_layout(root, n)
    stages: dict[str, float] = {}
    metadata = timed(stages, "read + validate metadata", lambda: read_metadata(csv))
    located = timed(stages, "locate images (one listing)",
                    lambda: locate_images(str(root), expected=metadata["image_index"]))
    assert not located.missing
    rows, split = timed(stages, "assign the official split",
                        lambda: prepare_rows(metadata, "official", archive_root=str(root)))
    created = str(directory / f"created_{n}.zarr")
    timed(stages, "create a store of N rows",
          lambda: FeatureStore.create(created, rows, chunk_rows=512, split=split,
                                      backbone={"name": "resnet50", "feature_dim": 2048},
                                      preprocessing=Preprocessing().to_dict()))
    finished = str(directory / f"finished_{n}.zarr")
    make_feature_store(finished, n, chunk_rows=512, seed=0, signal=0.3)

    def resume_check() -> int:
        store = FeatureStore.open(finished)
        store.check_settings({"dtype": store.provenance["dtype"], "chunk_rows": 512})
        return int((~store.done_chunks()).sum())

    assert timed(stages, "resume check of a finished store", resume_check) == 0
    timed(stages, "cxrdask info", lambda: describe_store(finished))
    timed(stages, "FeatureStore.open + table()", lambda: FeatureStore.open(finished).table())
    out = directory / f"head_{n}"
    result = timed(stages, "one training epoch (lazy)", lambda: train_head(
        finished, TrainConfig(epochs=1, resident_mb=0), out, progress=False, plot=False))
    timed(stages, "one evaluation pass", lambda: evaluate(finished, result.checkpoint, bootstrap=0))
    shutil.rmtree(root)  # the placeholder archive: N small files
    return {"n": n, **{k: round(v, 4) for k, v in stages.items()}, "peak_rss_mb": peak_rss_mb()}


def slopes(rows: list[dict]) -> dict[str, float]:
    """Each stage's log-log slope of seconds over N (1.0: linear)."""
    ns = np.log([row["n"] for row in rows])
    out = {}
    for stage in rows[0]:
        if stage in ("n", "peak_rss_mb"):
            continue
        seconds = np.log([max(row[stage], 1e-4) for row in rows])
        out[stage] = float(np.polyfit(ns, seconds, 1)[0])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,112120")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", default="benchmarks/results/bench_scale")
    args = parser.parse_args(argv)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    try:
        for n in (int(v) for v in args.sizes.split(",")):
            rows.append(measure(n, directory))
            print(rows[-1], flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)
    fitted = slopes(rows) if len(rows) > 1 else {}
    shown = [{"what": stage, **{f"N={row['n']:,} (s)": row[stage] for row in rows},
              "log-log slope": round(fitted.get(stage, float("nan")), 2)}
             for stage in rows[0] if stage not in ("n", "peak_rss_mb")]
    shown.append({"what": "peak RSS of this process (MB)",
                  **{f"N={row['n']:,} (s)": row["peak_rss_mb"] for row in rows}})
    header = f"bench_scale on {machine()}"
    save_results(args.out, shown, header, vars(args))
    _plot(rows, Path(args.out).with_suffix(".png"), header)
    print(table(shown, header))


def _plot(rows: list[dict], path: Path, header: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ns = [row["n"] for row in rows]
    for stage in rows[0]:
        if stage not in ("n", "peak_rss_mb"):
            ax.plot(ns, [max(row[stage], 1e-4) for row in rows], marker="o", label=stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows N")
    ax.set_ylabel("seconds")
    ax.set_title(header, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
