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
is fitted (1.0 = linear).

``--s3`` also times the metadata read, the listing (and counts its LIST requests: one pass
is ceil(N / 1000) pages), the split, the store's creation, the resume check, ``info`` and
``table()`` with the archive and the stores in a bucket of moto's S3 server on 127.0.0.1
(the objects are put into the server in-process, untimed: only reading them is measured).

``--extract`` runs a real extraction of the N placeholder images at a small input size
(``--image-size``, 32 by default: ResNet50's per-image compute is then small, so every
fixed and per-task cost shows) on a local cluster, in a child process as a user's job
would run: its wall time, the share of the workers' time not spent reading, decoding,
resizing, running the network or writing (the orchestration overhead: scheduling,
task hand-off, waiting at the start and the end), the client process's peak RSS (client
and scheduler), and the slowest answer of the Dask dashboard while the job ran.

    python -m benchmarks.bench_scale --s3 --extract           # 1,000, 10,000 and 112,120
    python -m benchmarks.bench_scale --sizes 1000,2000 --out /tmp/scale   # a quick check
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import machine, peak_rss_mb, save_results, table

PLACEHOLDER_PNG = bytes.fromhex(  # a valid 1x1 gray PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c6360000000020001e221bc330000000049454e44ae426082")


def write_layout(root: Path, n: int) -> str:
    """NIH's files for ``n`` images: the CSV, the official lists, placeholder PNGs."""
    from cxrdask.archive.synthetic import format_csv, image_folder, make_metadata, official_lists

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


def measure(n: int, directory: Path, s3: dict | None = None, extract: dict | None = None) -> dict:
    """Every stage at N rows; ``s3``: ``{"options", "proxy"}`` to time the S3 stages too;
    ``extract``: ``{"workers", "image_size"}`` to run a real extraction too."""
    from cxrdask.evaluation.report import evaluate
    from cxrdask.head.train import TrainConfig, train_head
    from cxrdask.testing import make_feature_store

    root = directory / f"archive_{n}"
    csv = write_layout(root, n)
    finished = directory / f"finished_{n}.zarr"
    make_feature_store(str(finished), n, chunk_rows=512, seed=0, signal=0.3)
    stages: dict[str, float] = {}
    time_store_stages(stages, "", n, str(root), str(directory / f"created_{n}.zarr"),
                      str(finished))
    out = directory / f"head_{n}"
    result = timed(stages, "one training epoch (lazy)", lambda: train_head(
        str(finished), TrainConfig(epochs=1, resident_mb=0), out, progress=False, plot=False))
    timed(stages, "one evaluation pass",
          lambda: evaluate(str(finished), result.checkpoint, bootstrap=0))
    counts: dict[str, float] = {}
    if s3 is not None:
        upload(root, f"archive_{n}")  # untimed: only reading the bucket is measured
        upload(finished, f"finished_{n}.zarr")
        counts.update(time_store_stages(
            stages, "S3: ", n, f"s3://{BUCKET}/archive_{n}", f"s3://{BUCKET}/created_{n}.zarr",
            f"s3://{BUCKET}/finished_{n}.zarr", **s3))
    if extract is not None:
        counts.update(measure_extraction(csv, root, directory / f"extracted_{n}.zarr", **extract))
        stages["extraction (all of it, warm-up excluded)"] = counts.pop("extraction seconds")
    shutil.rmtree(root)  # the placeholder archive: N small files
    return {"n": n, **{k: round(v, 4) for k, v in stages.items()}, "peak_rss_mb": peak_rss_mb(),
            **counts}


def time_store_stages(stages: dict, prefix: str, n: int, archive: str, created: str,
                      finished: str, options: dict | None = None, proxy=None) -> dict:
    """The stages that read the archive and the stores, on local disk or (with
    ``options`` and the request-counting ``proxy``) in the bucket: read and validate the
    CSV, list the images, assign the official split, create a store of N rows (at
    ``created``), the resume check, ``info`` and ``table()`` of the finished store (the
    archive holds ``n`` images). Each
    stage's seconds go into ``stages`` under ``prefix`` + its name; returns the proxy's
    request counts of the listing, the resume check and ``table()`` (none without one)."""
    from cxrdask.archive.images import locate_images
    from cxrdask.archive.kinds.nih import read_metadata
    from cxrdask.extract.layout import prepare_rows
    from cxrdask.imaging.preprocessing import Preprocessing
    from cxrdask.info import describe_store
    from cxrdask.store.features import FeatureSettings, FeatureStore

    def requests() -> collections.Counter:
        return proxy.requests.copy() if proxy is not None else collections.Counter()

    metadata = timed(stages, f"{prefix}read + validate metadata", lambda: read_metadata(
        f"{archive}/Data_Entry_2017.csv", storage_options=options))
    before = requests()
    located = timed(stages, f"{prefix}locate images (one listing)", lambda: locate_images(
        archive, storage_options=options, expected=metadata["image_index"]))
    listing = requests() - before
    assert not located.missing and len(located.urls) == n
    rows, split = timed(stages, f"{prefix}assign the official split", lambda: prepare_rows(
        metadata, "official", archive_root=archive, storage_options=options))
    timed(stages, f"{prefix}create a store of N rows", lambda: FeatureStore.create(
        created, rows, FeatureSettings(backbone={"name": "resnet50", "feature_dim": 2048},
                                       preprocessing=Preprocessing().to_dict(), split=split),
        chunk_rows=512, storage_options=options))

    def resume_check() -> int:
        opened = FeatureStore.open(finished, storage_options=options)
        opened.check_settings({"dtype": opened.provenance["dtype"], "chunk_rows": 512})
        return int((~opened.done_chunks()).sum())

    before = requests()
    assert timed(stages, f"{prefix}resume check of a finished store", resume_check) == 0
    resume = requests() - before
    timed(stages, f"{prefix}cxrdask info", lambda: describe_store(finished, options))
    before = requests()
    timed(stages, f"{prefix}FeatureStore.open + table()",
          lambda: FeatureStore.open(finished, storage_options=options).table())
    opened = requests() - before
    if proxy is None:
        return {}
    return {"S3 LIST requests of the listing": listing["LIST"],
            "S3 requests of the resume check": resume.total(),
            "S3 requests of open + table()": opened.total()}


BUCKET = "scale"


def upload(local: Path, prefix: str) -> None:
    """Put every file under ``local`` into moto's bucket directly (in-process, untimed)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for path in local.rglob("*"):
        if path.is_file():
            backend.put_object(BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}",
                               path.read_bytes())


def measure_extraction(csv: str, root: Path, store: Path, workers: int, image_size: int) -> dict:
    """A real extraction of the archive in a child process (the user's client). The
    orchestration share is the workers' time outside any chunk task (scheduling, hand-off,
    the start and the last wave); time inside a task is the image work and its write."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--extract-child", csv, str(root),
         str(store), str(workers), str(image_size)], capture_output=True, text=True, check=True)
    shutil.rmtree(store, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def extract_child(csv: str, root: str, store: str, workers: int, image_size: int) -> dict:
    """``extract_features`` as a notebook user calls it, on a local cluster of ``workers``
    one-thread processes, with the dashboard polled every half second meanwhile."""
    from cxrdask.extract.run import extract_features
    from cxrdask.extract.task_config import STAGES
    from cxrdask.runtime.cluster import local_client

    slowest = [0.0]
    answered = [0]
    done = threading.Event()

    def poll(url: str) -> None:
        while not done.wait(0.5):
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            answered[0] += 1

    with local_client(n_workers=workers, threads_per_worker=1, announce=False,
                      dashboard_address="127.0.0.1:0") as client:
        status = client.dashboard_link.replace("/status", "/individual-progress")
        poller = threading.Thread(target=poll, args=(status,), daemon=True)
        poller.start()
        try:
            summary = extract_features(csv, root, store, client=client, weights="random",
                                       image_size=image_size, split="official", progress=False)
        finally:
            done.set()
            poller.join()
    timings = summary.timings
    in_tasks = float(timings["task_s"].sum())
    stages = timings[list(STAGES)].sum()
    return {"extraction seconds": summary.seconds,
            "extraction images/s": summary.images_per_second,
            "extraction chunks": summary.chunks_run,
            "orchestration share of the workers' time": max(0.0, 1 - in_tasks / (summary.seconds * workers)),
            "extraction stages": " ".join(f"{k.removesuffix('_s')} {v / stages.sum():.0%}"
                                          for k, v in stages.items()),
            "client peak RSS (MB)": peak_rss_mb(),
            "dashboard: slowest answer during the job (s)": slowest[0],
            "dashboard: answers during the job": answered[0]}


COUNTS = ("S3 LIST requests of the listing", "S3 requests of the resume check",
          "S3 requests of open + table()", "extraction images/s", "extraction chunks",
          "extraction stages",
          "orchestration share of the workers' time", "client peak RSS (MB)",
          "dashboard: slowest answer during the job (s)", "dashboard: answers during the job")
"""Figures reported beside the stages' seconds, not fitted."""


def slopes(rows: list[dict]) -> dict[str, float]:
    """Each stage's log-log slope of seconds over N (1.0: linear)."""
    ns = np.log([row["n"] for row in rows])
    out = {}
    for stage in rows[0]:
        if stage in ("n", "peak_rss_mb") or stage in COUNTS:
            continue
        seconds = np.log([max(row[stage], 1e-4) for row in rows])
        out[stage] = float(np.polyfit(ns, seconds, 1)[0])
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,112120")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", default="benchmarks/results/bench_scale")
    parser.add_argument("--s3", action="store_true",
                        help="also time the stages that read object storage, on moto's S3 server")
    parser.add_argument("--extract", action="store_true",
                        help="also run a real extraction of the N placeholder images")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for --extract")
    parser.add_argument("--image-size", type=int, default=32, help="network input for --extract")
    parser.add_argument("--extract-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.extract_child:
        csv, root, store, workers, size = args.extract_child
        print(json.dumps(extract_child(csv, root, store, int(workers), int(size))))
        return
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-scale-"))
    extract = {"workers": args.workers, "image_size": args.image_size} if args.extract else None
    rows = []
    with contextlib.ExitStack() as stack:
        s3 = None
        if args.s3:
            import logging

            from cxrdask.testing import FaultyProxy, local_s3_server

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
            options = stack.enter_context(local_s3_server(BUCKET))
            proxy = stack.enter_context(FaultyProxy(options["client_kwargs"]["endpoint_url"]))
            options = {**options, "client_kwargs": {**options["client_kwargs"],
                                                    "endpoint_url": proxy.endpoint}}
            s3 = {"options": options, "proxy": proxy}
        try:
            for n in (int(v) for v in args.sizes.split(",")):
                rows.append(measure(n, directory, s3, extract))
                print(rows[-1], flush=True)
        finally:
            if not args.dir:
                shutil.rmtree(directory, ignore_errors=True)
    fitted = slopes(rows) if len(rows) > 1 else {}
    shown = [{"what": stage, **{f"N={row['n']:,} (s)": row[stage] for row in rows},
              "log-log slope": round(fitted.get(stage, float("nan")), 2)}
             for stage in rows[0] if stage not in ("n", "peak_rss_mb") and stage not in COUNTS]
    shown.append({"what": "peak RSS of this process (MB)",
                  **{f"N={row['n']:,} (s)": row["peak_rss_mb"] for row in rows}})
    shown += [{"what": name, **{f"N={row['n']:,} (s)": _rounded(row[name]) for row in rows}}
              for name in COUNTS if name in rows[0]]
    header = f"bench_scale on {machine()}"
    save_results(args.out, shown, header, vars(args))
    _plot(rows, Path(args.out).with_suffix(".png"), header)
    print(table(shown, header))


def _rounded(value):
    return round(value, 3) if isinstance(value, float) else value


def _plot(rows: list[dict], path: Path, header: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ns = [row["n"] for row in rows]
    for stage in rows[0]:
        if stage not in ("n", "peak_rss_mb") and stage not in COUNTS:
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
