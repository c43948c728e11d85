"""How every step around a study grows with its rows N, up to a million across archives.

For each N (10,000, 100,000, 300,000 and 1,000,000 by default) this writes, without any
extraction:

- an archive of NIH's layout of N images (the CSV, the official lists, folders of 10,000;
  each image a tiny placeholder PNG: only listing and bookkeeping read it);
- a study's stores, N rows together, shared between NIH, CheXpert and MIMIC-CXR in
  proportion to their published sizes (15.7 %, 31.3 %, 52.9 %): synthetic features with a
  learnable signal, each archive's own finding set (CheXpert's and MIMIC's 14, some missing
  on every row), patients with several images each, and each row's image signatures;
- an RSNA-sized store (26,684 rows) whose first rows are copies of NIH-like rows' images.

Then it times:

- read and validate the metadata CSV; locate the images (one listing); assign the
  official split; create a store of N rows (and counts its objects);
- on the study's stores: the resume check, ``cxrdask info``, ``cxrdask verify`` and
  ``table()``; one training epoch over every store read lazily (the reader's rows/s);
- each in a child process of its own, with that process's peak RSS: one head on every
  store, 50 epochs without early stopping (the resident split choosing memory or the lazy reader, and saying
  which); ``evaluate`` with 1,000 patient resamples on each store's test rows; the overlap
  search of the N rows against the RSNA-sized store (recall of the planted copies); the
  study, each archive left out in turn (``--study-epochs`` and ``--study-bootstrap``, 5 and
  200 by default: labelled in the table).

The log-log slope of each stage's seconds over N is fitted (1.0 = linear) and drawn.

``--s3`` also times the archive and store stages with the archive and the stores in a bucket
of moto's S3 server on 127.0.0.1 (put there in-process, untimed), and counts each stage's
requests (LIST, HEAD, GET, PUT) through a counting proxy; ``--s3 stores`` the stores' stages
only (moto lists a bucket of a million objects slowly: the archive's listing was measured to
112,120 images, one LIST a 1,000).

``--extract`` runs a real extraction of the N placeholder images at a small input size
(``--image-size``, 32 by default: ResNet50's per-image compute is then small, so every
fixed and per-task cost shows) on a local cluster, in a child process as a user's job
would run: its wall time, the share of the workers' time not spent reading, decoding,
resizing, running the network or writing (the orchestration overhead), the client
process's peak RSS (client and scheduler), and the slowest answer of the Dask dashboard
while the job ran.

``--stages bookkeeping`` leaves out the lazy epoch and the four child stages (head,
``evaluate``, overlap, study: most of an hour at a million rows), to measure again what
reads and writes the archive and the stores.

    python -m benchmarks.bench_scale --sizes 10000,100000,300000,1000000 --s3
    python -m benchmarks.bench_scale --sizes 1000,2000 --rsna-rows 500 --out /tmp/scale  # quick
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


ARCHIVES = (("nih", 112_120), ("chexpert", 223_414), ("mimic", 377_110))
"""The archives a study's N rows are shared between, in their published sizes' proportions."""
RSNA_ROWS = 26_684  # RSNA Pneumonia: NIH's images again, what the overlap search runs against
PLANTED = 2_000  # of them, copies of the NIH-like store's rows
CHEXPERT_FINDINGS = {  # CheXpert's (and MIMIC-CXR's) findings, from NIH's labels where shared
    "No Finding": None, "Enlarged Cardiomediastinum": None, "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": "Infiltration", "Lung Lesion": "Nodule", "Edema": "Edema",
    "Consolidation": "Consolidation", "Pneumonia": "Pneumonia", "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax", "Pleural Effusion": "Effusion",
    "Pleural Other": "Pleural_Thickening", "Fracture": None, "Support Devices": None}


def archive_rows(n: int) -> dict[str, int]:
    """N rows shared between the archives in proportion to their sizes."""
    total = sum(size for _, size in ARCHIVES)
    rows = {name: round(n * size / total) for name, size in ARCHIVES}
    rows[ARCHIVES[-1][0]] += n - sum(rows.values())
    return rows


def write_study_stores(directory: Path, n: int, rsna_rows: int) -> tuple[list[str], str]:
    """The archives' stores (N rows together, other finding sets, signatures) and an
    RSNA-sized store whose first rows are copies of the NIH-like store's images."""
    from cxrdask.testing import StoreOrigin, copy_signatures, make_feature_store

    urls = []
    for seed, (name, rows) in enumerate(archive_rows(n).items()):
        url = str(directory / f"{name}_{n}.zarr")
        make_feature_store(url, rows, chunk_rows=512, seed=seed, signal=0.3, origin=StoreOrigin(
            kind=name, findings=None if name == "nih" else CHEXPERT_FINDINGS, signatures=True,
            backbone_seed=0))
        urls.append(url)
    rsna = str(directory / f"rsna_{n}.zarr")
    make_feature_store(rsna, rsna_rows, chunk_rows=512, seed=9, signal=0.3,
                       origin=StoreOrigin(kind="rsna", signatures=True, backbone_seed=0))
    nih_rows = archive_rows(n)["nih"]
    planted = np.sort(np.random.default_rng(0).choice(nih_rows, min(PLANTED, nih_rows, rsna_rows),
                                                      replace=False))
    copy_signatures(urls[0], planted, rsna)
    return urls, rsna


def planted_count(n: int, args) -> int:
    return min(PLANTED, archive_rows(n)["nih"], args.rsna_rows)


def measure(n: int, directory: Path, args, s3: dict | None = None) -> dict:
    """Every stage at N rows (see the module's docstring); ``s3``: ``{"options", "proxy"}``
    to time the S3 stages too. Returns ``{"n", "stages": seconds, "counts": figures}``."""
    root = directory / f"archive_{n}"
    csv = write_layout(root, n)
    stages: dict[str, float] = {}
    counts: dict[str, object] = {}
    started = time.perf_counter()
    stores, rsna = write_study_stores(directory, n, args.rsna_rows)
    counts["writing the stores (synthetic features, not a user step) (s)"] = time.perf_counter() - started
    counts.update(time_store_stages(stages, "", n, str(root), str(directory / f"created_{n}.zarr"),
                                    stores))
    if args.stages == "all":
        time_training_stages(stages, counts, n, directory, stores, rsna, args)
    if s3 is not None:
        whole = args.s3 == "all"
        if whole:
            upload(root, f"archive_{n}")  # untimed: only reading the bucket is measured
        for url in stores:
            upload(Path(url), Path(url).name)
        counts.update(time_store_stages(
            stages, "S3: ", n, f"s3://{BUCKET}/archive_{n}" if whole else str(root),
            f"s3://{BUCKET}/created_{n}.zarr", [f"s3://{BUCKET}/{Path(url).name}" for url in stores],
            time_archive=whole, **s3))
        clear_bucket()
    if args.resume:
        counts.update(measure_resume(csv, root, directory / f"resumed_{n}.zarr", args.workers))
        stages["resume a finished extraction (the command line)"] = counts.pop("resume seconds")
    if args.extract:
        counts.update(measure_extraction(csv, root, directory / f"extracted_{n}.zarr",
                                         args.workers, args.image_size))
        stages["extraction (all of it, warm-up excluded)"] = counts.pop("extraction seconds")
    shutil.rmtree(root)  # the placeholder archive: N small files
    for url in [*stores, rsna, str(directory / f"created_{n}.zarr")]:
        shutil.rmtree(url, ignore_errors=True)
    counts["peak RSS of this process (MB)"] = peak_rss_mb()
    return {"n": n, "stages": {k: round(v, 4) for k, v in stages.items()}, "counts": counts}


def time_training_stages(stages: dict, counts: dict, n: int, directory: Path, stores: list[str],
                         rsna: str, args) -> None:
    """The lazy epoch, then the head, ``evaluate``, the overlap and the study, each in a
    child process of its own (see the module's docstring)."""
    from cxrdask.head.train import TrainConfig, train_head

    epoch = timed(stages, "one training epoch over every store (lazy reader)", lambda: train_head(
        stores, TrainConfig(epochs=1, resident_mb=0), directory / f"epoch_{n}", progress=False,
        plot=False))
    counts["lazy reader: training and validation rows/s"] = sum(
        each["rows"]["train"] + each["rows"]["validation"] for each in epoch.stores) / stages[
        "one training epoch over every store (lazy reader)"]
    for stage, child in (("head, 50 epochs", "head"), ("evaluate, 1,000 patient resamples", "evaluate"),
                         (f"overlap: N rows against {args.rsna_rows:,}", "overlap"),
                         ("study: leave each archive out", "study")):
        result = run_child(child, {"stores": stores, "rsna": rsna, "planted": planted_count(n, args),
                                   "checkpoint": counts.get("head, 50 epochs: checkpoint"),
                                   "out": str(directory / f"{child}_{n}"), "study_epochs": args.study_epochs,
                                   "study_bootstrap": args.study_bootstrap})
        stages[stage] = result.pop("seconds")
        counts.update({f"{stage}: {key}": value for key, value in result.items()})


def run_child(stage: str, arguments: dict) -> dict:
    """One stage in a child process of its own, as a user's notebook or command would run
    it: its seconds and the process's peak RSS are its own."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--stage-child", stage,
                             json.dumps(arguments)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"stage {stage} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def stage_child(stage: str, arguments: dict) -> dict:
    """The heavy stages, each timed in its own process (see :func:`run_child`)."""
    from cxrdask.config import EvaluateConfig, TrainConfig
    from cxrdask.evaluation.report import evaluate
    from cxrdask.head.train import train_head
    from cxrdask.store.copies import copies_phrase
    from cxrdask.store.overlap import find_overlap

    stores, out = arguments["stores"], Path(arguments["out"])
    started = time.perf_counter()
    figures: dict[str, object] = {}
    if stage == "head":
        result = train_head(stores, TrainConfig(epochs=50, early_stopping=None), out,
                            progress=False, plot=False)
        figures["memory"] = "; ".join(f"{k}: {v}" for k, v in result.memory.items())
        figures["checkpoint"] = result.checkpoint
        figures["copies"] = " / ".join(copies_phrase(each.get("copies")).lstrip("; ")
                                       for each in result.stores[1:])
    elif stage == "evaluate":  # the head of the stage before
        rows = 0
        for k, url in enumerate(stores):
            report = evaluate(url, arguments["checkpoint"], EvaluateConfig(bootstrap=1000), split="test",
                              out_dir=out / f"report_{k}")
            rows += report.n_rows
        figures["test rows scored"] = rows
    elif stage == "overlap":
        found = [find_overlap(url, arguments["rsna"]) for url in stores]
        figures["pairs found"] = sum(len(f) for f in found)
        figures["planted copies found"] = f"{len(found[0]):,} of {arguments['planted']:,}"
    elif stage == "study":
        from cxrdask.runtime.cluster import local_client
        from cxrdask.study.table import run_study

        with local_client(n_workers=2, threads_per_worker=1, announce=False) as client:
            started = time.perf_counter()
            run_study(stores, out, TrainConfig(epochs=arguments["study_epochs"]),
                      EvaluateConfig(bootstrap=arguments["study_bootstrap"]), client=client)
        figures["settings"] = (f"{arguments['study_epochs']} epochs a head, "
                               f"{arguments['study_bootstrap']} resamples a score")
    return {"seconds": time.perf_counter() - started, **figures,
            "peak RSS of its process (MB)": peak_rss_mb()}


def time_store_stages(stages: dict, prefix: str, n: int, archive: str, created: str,
                      finished: list[str], options: dict | None = None, proxy=None,
                      time_archive: bool = True) -> dict:
    """The stages that read the archive and the stores, on local disk or (with
    ``options`` and the request-counting ``proxy``) in the bucket: read and validate the
    CSV, list the images, assign the official split, create a store of N rows (at
    ``created``); then, on each ``finished`` store (N rows together), the resume check,
    ``info``, ``verify`` and ``table()``, their seconds summed. Each stage's seconds go into
    ``stages`` under ``prefix`` + its name; returns the objects the created store holds and,
    with a proxy, each stage's requests by kind. Without ``time_archive`` the archive (then
    a local folder) is read untimed, for the rows of the store created."""
    from cxrdask.archive.images import locate_images
    from cxrdask.archive.kinds.nih import read_metadata
    from cxrdask.extract.layout import prepare_rows
    from cxrdask.imaging.preprocessing import Preprocessing
    from cxrdask.info import describe_store
    from cxrdask.store.features import FeatureSettings, FeatureStore

    counted: dict[str, collections.Counter] = {}

    def step(name: str, work):
        before = proxy.requests.copy() if proxy is not None else collections.Counter()
        result = timed(stages, f"{prefix}{name}", work)
        if proxy is not None:
            counted[name] = proxy.requests - before
        return result

    if time_archive:
        metadata = step("read + validate metadata", lambda: read_metadata(
            f"{archive}/Data_Entry_2017.csv", storage_options=options))
        located = step("locate images (one listing)", lambda: locate_images(
            archive, storage_options=options, expected=metadata["image_index"]))
        assert not located.missing and len(located.urls) == n
        rows, split = step("assign the official split", lambda: prepare_rows(
            metadata, "official", archive_root=archive, storage_options=options))
    else:
        rows, split = prepare_rows(read_metadata(f"{archive}/Data_Entry_2017.csv"), "official",
                                   archive_root=archive)
    step("create a store of N rows", lambda: FeatureStore.create(
        created, rows, FeatureSettings(backbone={"name": "resnet50", "feature_dim": 2048},
                                       preprocessing=Preprocessing().to_dict(), split=split),
        chunk_rows=512, storage_options=options))

    def resume_check() -> int:
        pending = 0
        for url in finished:
            opened = FeatureStore.open(url, storage_options=options)
            opened.check_settings({"dtype": opened.provenance["dtype"], "chunk_rows": 512})
            pending += int((~opened.done_chunks()).sum())
        return pending

    assert step("resume check of the finished stores", resume_check) == 0
    step("cxrdask info of each store", lambda: [describe_store(url, options) for url in finished])
    problems = step("cxrdask verify of each store", lambda: [
        FeatureStore.open(url, storage_options=options).verify() for url in finished])
    assert all(p.empty for p in problems)
    step("FeatureStore.open + table() of each store",
         lambda: [FeatureStore.open(url, storage_options=options).table() for url in finished])
    figures: dict[str, object] = {}
    if proxy is None:
        figures["objects of a created store"] = sum(1 for p in Path(created).rglob("*") if p.is_file())
        figures["objects of the finished stores"] = sum(
            1 for url in finished for p in Path(url).rglob("*") if p.is_file())
        return figures
    if time_archive:
        figures["S3 LIST requests of the listing"] = counted["locate images (one listing)"]["LIST"]
    for name in ("create a store of N rows", "resume check of the finished stores",
                 "cxrdask info of each store", "FeatureStore.open + table() of each store"):
        figures[f"S3 requests of {name}"] = " ".join(
            f"{kind} {counted[name][kind]}" for kind in ("LIST", "HEAD", "GET", "PUT", "DELETE")
            if counted[name][kind])
    return figures


BUCKET = "scale"


def upload(local: Path, prefix: str) -> None:
    """Put every file under ``local`` into moto's bucket directly (in-process, untimed)."""
    backend = _backend()
    for path in local.rglob("*"):
        if path.is_file():
            backend.put_object(BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}",
                               path.read_bytes())


def clear_bucket() -> None:
    """Empty the bucket after a size (moto holds what it was given)."""
    backend = _backend()
    for key in list(backend.get_bucket(BUCKET).keys.keys()):
        backend.delete_object(BUCKET, key)


def _backend():
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"]


def measure_extraction(csv: str, root: Path, store: Path, workers: int, image_size: int) -> dict:
    """A real extraction of the archive in a child process (the user's client). The
    orchestration share is the workers' time outside any chunk task (scheduling, hand-off,
    the start and the last wave); time inside a task is the image work and its write."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_scale", "--extract-child", csv, str(root),
         str(store), str(workers), str(image_size)], capture_output=True, text=True, check=True)
    shutil.rmtree(store, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


RESUMED = ["--weights", "random", "--image-size", "32", "--precision", "fp32", "--engine", "torch",
           "--compile", "no", "--chunk-rows", "512", "--split", "official"]
"""The options of the extraction :func:`measure_resume` makes finished, then runs again."""


def measure_resume(csv: str, root: Path, store: Path, workers: int) -> dict:
    """A finished extraction's store, made as ``cxrdask extract`` makes it (its plan, its
    settings; each chunk written with random features, no network run), then the same
    command run again from the command line, in a child process: its wall time (Python's
    start, the archive's listing, the plan, the cluster, the store's read-back on the
    workers) and the client process's peak RSS."""
    from cxrdask.extract.plan import plan_extraction
    from cxrdask.store.features import STATUS_OK, FeatureStore

    plan = plan_extraction(csv, str(root), str(store), weights="random", image_size=32,
                           precision="fp32", engine="torch", compile=False, chunk_rows=512,
                           split="official")
    made = FeatureStore.create(str(store), plan.rows, plan.settings(), chunk_rows=512,
                               extra={"archive": plan.archive, "extract_config": plan.config.to_dict()})
    for chunk in range(made.n_chunks):
        start, stop = made.chunk_bounds(chunk)
        features = np.random.default_rng([7, chunk]).random((stop - start, made.feature_dim), np.float32)
        made.write_chunk(chunk, features, np.full(stop - start, STATUS_OK, np.uint8), [""] * (stop - start))
    made.update_provenance(complete=True, failed_rows=0)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--resume-child", csv,
                             str(root), str(store), str(workers)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"the resumed extraction failed:\n{result.stderr[-4000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    shutil.rmtree(store, ignore_errors=True)
    return {"resume seconds": seconds, "resume: chunks run": answer["chunks run"],
            "resume: client peak RSS (MB)": answer["peak RSS (MB)"]}


def resume_child(csv: str, root: str, store: str, workers: int) -> dict:
    """``cxrdask extract`` with the options the store was made with, as a user types it."""
    import io

    from cxrdask.cli import main as cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli(["extract", "--metadata", csv, "--images", root, "--store", store, "--quiet",
                    "--workers", str(workers), *RESUMED])
    if code:
        raise SystemExit(code)
    run = [line for line in printed.getvalue().splitlines() if "chunk" in line]
    return {"chunks run": run[-1] if run else printed.getvalue()[-200:], "peak RSS (MB)": peak_rss_mb()}


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


def _names(rows: list[dict], part: str) -> list[str]:
    """Every stage (or figure) any size measured, in the order first seen (a size run without
    ``--s3`` has no S3 stages)."""
    return list(dict.fromkeys(name for row in rows for name in row[part]))


def slopes(rows: list[dict]) -> dict[str, float]:
    """Each stage's log-log slope of seconds over N (1.0: linear), over the sizes that
    measured it (two at least)."""
    fitted = {}
    for stage in _names(rows, "stages"):
        points = [(row["n"], row["stages"][stage]) for row in rows if stage in row["stages"]]
        if len(points) > 1:
            n, seconds = np.log([p[0] for p in points]), np.log([max(p[1], 1e-4) for p in points])
            fitted[stage] = float(np.polyfit(n, seconds, 1)[0])
    return fitted


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,300000,1000000")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", default="benchmarks/results/bench_scale")
    parser.add_argument("--s3", nargs="?", const="all", choices=("all", "stores"),
                        help="also time the stages that read object storage, on moto's S3 server "
                             "(stores: the stores' stages only, not the archive's listing)")
    parser.add_argument("--extract", action="store_true",
                        help="also run a real extraction of the N placeholder images")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for --extract")
    parser.add_argument("--image-size", type=int, default=32, help="network input for --extract")
    parser.add_argument("--rsna-rows", type=int, default=RSNA_ROWS,
                        help="rows of the store the overlap search runs against")
    parser.add_argument("--study-epochs", type=int, default=5, help="epochs of each head of the study")
    parser.add_argument("--study-bootstrap", type=int, default=200,
                        help="patient resamples of each score of the study")
    parser.add_argument("--resume", action="store_true",
                        help="also time `cxrdask extract` run again on a finished store of the "
                             "N images (from the command line, its client's peak RSS)")
    parser.add_argument("--stages", choices=("all", "bookkeeping"), default="all",
                        help="bookkeeping: only the CSV, the listing and the stores' steps (no "
                             "epoch, head, evaluate, overlap or study)")
    parser.add_argument("--extract-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--resume-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--stage-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--from-log", nargs="+", metavar="LOG",
                        help="make the table and chart from the lines earlier runs printed (one "
                             "size a run, each run's output kept)")
    args = parser.parse_args(argv)
    if args.extract_child:
        csv, root, store, workers, size = args.extract_child
        print(json.dumps(extract_child(csv, root, store, int(workers), int(size))))
        return
    if args.resume_child:
        csv, root, store, workers = args.resume_child
        print(json.dumps(resume_child(csv, root, store, int(workers))))
        return
    if args.stage_child:
        print(json.dumps(stage_child(args.stage_child[0], json.loads(args.stage_child[1]))))
        return
    if args.from_log:
        rows = [json.loads(line) for log in args.from_log for line in Path(log).read_text().splitlines()
                if line.startswith('{"n": ')]
        return report(sorted(rows, key=lambda row: row["n"]), args)
    directory = Path(args.dir or tempfile.mkdtemp(prefix="bench-scale-"))
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
                rows.append(measure(n, directory, args, s3))
                print(json.dumps(rows[-1], default=str), flush=True)
        finally:
            if not args.dir:
                shutil.rmtree(directory, ignore_errors=True)
    report(rows, args)


def report(rows: list[dict], args) -> None:
    """The table (JSON, CSV), the log-log chart and the printed table of the sizes measured."""
    for row in rows:
        row["counts"].pop("head, 50 epochs: checkpoint", None)  # a path in a removed folder
    header = f"bench_scale on {machine()}"
    shown = shown_rows(rows)
    save_results(args.out, shown, header, vars(args))
    _plot(rows, Path(args.out).with_suffix(".png"), header)
    print(table(shown, header))


def shown_rows(rows: list[dict]) -> list[dict]:
    """The table: each stage's seconds per N and its fitted slope, then the other figures."""
    fitted = slopes(rows)  # stages of one size get none
    shown = [{"what": stage, **{f"N={row['n']:,} (s)": row["stages"].get(stage) for row in rows},
              "log-log slope": round(fitted[stage], 2) if stage in fitted else None}
             for stage in _names(rows, "stages")]
    return shown + [{"what": name, **{f"N={row['n']:,} (s)": _rounded(row["counts"].get(name))
                                      for row in rows}}
                    for name in _names(rows, "counts")]


def _rounded(value):
    return round(value, 3) if isinstance(value, float) else value


def _plot(rows: list[dict], path: Path, header: str) -> None:
    """Each stage's seconds against N, log-log, its fitted slope in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 7))
    fitted = slopes(rows)  # stages of one size get none
    colours = plt.get_cmap("tab20").colors
    for k, stage in enumerate(_names(rows, "stages")):
        label = f"{stage} (slope {fitted[stage]:.2f})" if stage in fitted else stage
        points = [(row["n"], max(row["stages"][stage], 1e-4)) for row in rows if stage in row["stages"]]
        ax.plot(*zip(*points, strict=True), marker="os^D"[k // 20 % 4], color=colours[k % 20],
                linestyle="--" if stage.startswith("S3") else "-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows N (all archives together)")
    ax.set_ylabel("seconds")
    ax.set_title(header, fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
