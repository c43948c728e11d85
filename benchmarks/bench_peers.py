"""cxrdask against the engines a user would pick instead, on the same images and model.

    python -m benchmarks.bench_peers                       # 2,000 synthetic NIH-size PNGs
    python -m benchmarks.bench_peers --n 564 --precisions fp32,bf16
    python -m benchmarks.bench_peers --images /data/nih/images --metadata /data/nih/Data_Entry_2017.csv

Contenders (each in a fresh Python process, same PNGs, same decode + resize + normalise
(:func:`cxrdask.imaging.decode.preprocess_bytes`), the same random-weight ResNet50 (seed 0) in
channels-last memory layout, same precision (bf16 by autocast), same batch, one torch
thread per model copy, one model copy per core, and 2,048 float16 values written per image;
the job is the rows ``read_metadata`` keeps):

* ``cxrdask``: ``extract_features`` with its defaults (a local cluster, the chunk size
  chosen from the job, ``engine="auto"``), into a Zarr store. Where the backbone runs fp32
  on the CPU the default engine is ONNX Runtime; in bf16, OpenVINO on a job big enough to
  repay starting it, else eager PyTorch (the ``engine`` column says which); either way on
  one worker process with a thread per core.
* ``cxrdask-cli``: ``cxrdask extract`` as a user types it (the job's files, precision and
  batch, random weights), timed from launching the command to its exit; its steady state
  is its own report (images over the run's seconds after the model warm-up).
* ``cxrdask-torch`` (where the defaults run another engine): ``engine="torch"``, eager
  PyTorch (in fp32 on one worker process per core), the model the peers run; not a peer.
* ``daft``: the documented batch-inference pattern: a ``@daft.cls`` class that loads the
  model in ``__init__`` and a ``@daft.method.batch`` method, ``max_concurrency`` = cores in
  processes, bytes from ``url.download()``, written with ``write_parquet``.
* ``spark``: ``pyspark.ml.functions.predict_batch_udf`` (the model made once per Python
  worker by ``make_predict_fn``) over the ``binaryFile`` source (the job's file list),
  ``local[cores]``, the files split into 4 partitions per core, written with
  ``write.parquet``. Spark SQL has no float16: the float16 values are stored bit for bit as
  int16.
* ``ray``: ``ray.data.read_binary_files`` then ``map_batches`` with a callable class
  (an actor pool of ``concurrency`` = cores, 0.9 of a logical CPU each so the read tasks can
  run beside them), written with ``write_parquet``.
* ``dataloader``: a plain PyTorch loop: a ``DataLoader`` with one worker process per core
  decodes, the main process runs the model with as many torch threads as cores, ``np.save``.
* ``spark2018``: the 2018 system's PySpark RDD job (``benchmarks/spark_2018.py``), for
  history: it writes comma-joined text, not float16.

Each is timed two ways: **end to end**, from launching its Python process to the last
feature written (imports, engine and model start-up included; for cxrdask the ONNX export
too, with an empty export cache), and **steady state**, a
second pass over the same images in the same process (cxrdask's second call reuses its
session cluster; the engines keep their session). Every contender's output is counted (no
row may be lost) and its features compared with cxrdask's on the same images.

The compute bound is measured in the same run: the bare backbone on one thread (eager,
tensors ready) and decode + preprocess on one thread; N cores bound = N / (1/a + 1/b).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine, save_results, table

CONTENDERS = ("cxrdask", "cxrdask-cli", "cxrdask-torch", "daft", "spark", "ray", "dataloader", "spark2018")
FEATURE_DIM = 2048


# ---------------------------------------------------------------------------------------
# The shared model: what every contender runs per batch.
# ---------------------------------------------------------------------------------------

class Model:
    """The random-weight ResNet50 (seed 0) every contender runs: uint8 PNG bytes in,
    float16 features out; one torch thread unless told otherwise."""

    def __init__(self, precision: str, threads: int = 1):
        import torch

        from cxrdask.backbones.build import build_backbone
        from cxrdask.backbones.runner import BackboneSpec

        torch.set_num_threads(threads)
        self.torch = torch
        # channels_last: PyTorch's performance guide for CNNs on CPU, what cxrdask runs too.
        self.model = build_backbone(BackboneSpec("resnet50", "random", 0)).to(
            memory_format=torch.channels_last)
        self.dtype = {"bf16": torch.bfloat16}.get(precision)

    def __call__(self, batch):
        """``batch``: float32 model inputs (B, 3, 224, 224) -> float16 features (B, 2048)."""
        import numpy as np

        torch = self.torch
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.dtype,
                                                    enabled=self.dtype is not None):
            out = self.model(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last))
        return out.float().numpy().astype(np.float16)

    def from_png_bytes(self, blobs, names=None):
        import numpy as np

        from cxrdask.imaging.decode import preprocess_bytes

        names = names if names is not None else [""] * len(blobs)
        return self(np.stack([preprocess_bytes(bytes(b), n)[0] for b, n in zip(blobs, names,
                                                                              strict=True)]))


# ---------------------------------------------------------------------------------------
# One pass per contender: (images root, metadata, file list, output dir, settings).
# ---------------------------------------------------------------------------------------

def pass_cxrdask(job: dict, out: str, state: dict) -> None:
    from cxrdask import extract_features

    extract_features(job["metadata"], job["root"], out + "/features.zarr", weights="random",
                     precision=job["precision"], batch_size=job["batch"], progress=False)


def pass_cxrdask_torch(job: dict, out: str, state: dict) -> None:
    """cxrdask with the PyTorch engine asked for (one worker process per core): the defaults
    before ``engine="auto"``, beside them where they run ONNX Runtime."""
    from cxrdask import extract_features

    extract_features(job["metadata"], job["root"], out + "/features.zarr", weights="random",
                     precision=job["precision"], engine="torch", batch_size=job["batch"],
                     progress=False)


def pass_daft(job: dict, out: str, state: dict) -> None:
    import daft

    if "cls" not in state:
        @daft.cls(max_concurrency=job["cores"], use_process=True)
        class Extractor:
            def __init__(self, precision: str):
                self.model = Model(precision)

            @daft.method.batch(return_dtype=daft.DataType.binary(), batch_size=job["batch"])
            def __call__(self, data):
                features = self.model.from_png_bytes(data.to_pylist())
                return [row.tobytes() for row in features]

        state["cls"] = Extractor
    extractor = state["cls"](job["precision"])
    frame = daft.from_pydict({"path": job["paths"]})
    frame = frame.with_column("features", extractor(frame["path"].download()))
    frame.write_parquet(out)


def pass_spark(job: dict, out: str, state: dict) -> None:
    if "session" not in state:
        from pyspark.sql import SparkSession

        os.environ["PYSPARK_PYTHON"] = sys.executable
        total = sum(os.path.getsize(p) for p in job["paths"])
        state["session"] = (
            SparkSession.builder.master(f"local[{job['cores']}]").appName("cxrdask-bench-peers")
            .config("spark.ui.enabled", "false").config("spark.driver.memory", "4g")
            .config("spark.python.worker.reuse", "true")
            .config("spark.sql.files.maxPartitionBytes", str(max(1 << 20, total // (4 * job["cores"]))))
            .getOrCreate())
        state["session"].sparkContext.setLogLevel("ERROR")
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, ShortType

    precision = job["precision"]

    def make_predict_fn():
        model = Model(precision)

        def predict(content):
            return model.from_png_bytes(list(content)).view("int16")

        return predict

    extract = predict_batch_udf(make_predict_fn, return_type=ArrayType(ShortType()),
                                batch_size=job["batch"])
    spark = state["session"]
    frame = spark.read.format("binaryFile").load(job["paths"])
    frame.select("path", extract("content").alias("features")).write.mode("overwrite").parquet(out)


def pass_ray(job: dict, out: str, state: dict) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=job["cores"], include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    precision = job["precision"]

    class Extractor:
        def __init__(self):
            self.model = Model(precision)

        def __call__(self, batch: dict) -> dict:
            features = self.model.from_png_bytes(list(batch["bytes"]))
            return {"path": batch["path"], "features": [row.tobytes() for row in features]}

    # An actor per core holding a whole logical CPU leaves none for the read tasks, and the
    # job stalls (seen with Ray 2.60 on 2 cores): each actor holds 0.9, the reads (bytes, no
    # decoding) run in what is left.
    data = ray.data.read_binary_files(job["paths"], include_paths=True, num_cpus=0.1)
    data = data.map_batches(Extractor, concurrency=job["cores"], batch_size=job["batch"],
                            num_cpus=0.9)
    data.write_parquet(out)


class PngFiles:
    """The DataLoader's dataset: one PNG file in, its model input out (a map-style dataset)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        from cxrdask.imaging.decode import preprocess_bytes

        with open(self.paths[i], "rb") as handle:
            return torch.from_numpy(preprocess_bytes(handle.read(), self.paths[i])[0])


def pass_dataloader(job: dict, out: str, state: dict) -> None:
    import numpy as np
    import torch

    if "model" not in state:
        state["model"] = Model(job["precision"], threads=job["cores"])
    loader = torch.utils.data.DataLoader(PngFiles(job["paths"]), batch_size=job["batch"],
                                         num_workers=job["cores"], prefetch_factor=4,
                                         multiprocessing_context="spawn")
    os.makedirs(out, exist_ok=True)
    for i, x in enumerate(loader):
        np.save(f"{out}/features_{i:05d}.npy", state["model"](x.numpy()))


def pass_spark2018(job: dict, out: str, state: dict) -> None:
    from benchmarks.spark_2018 import run_spark

    names = [os.path.basename(p) for p in job["paths"]]
    run_spark(names, job["paths"], out + "/features_txt", job["cores"], job["precision"], job["batch"])


PASSES = {"cxrdask": pass_cxrdask, "cxrdask-torch": pass_cxrdask_torch,
          "daft": pass_daft, "spark": pass_spark, "ray": pass_ray,
          "dataloader": pass_dataloader, "spark2018": pass_spark2018}


def child(name: str, job_file: str) -> None:
    """Two passes of one contender in this (fresh) process; prints one JSON line per pass."""
    job = json.loads(Path(job_file).read_text())
    state: dict = {}
    for index in (1, 2):
        out = f"{job['out']}/{name}-{index}"
        started = time.time()
        PASSES[name](job, out, state)
        print(json.dumps({"pass": index, "started": started, "ended": time.time()}), flush=True)


# ---------------------------------------------------------------------------------------
# Reading each contender's output back: rows written, and features to compare.
# ---------------------------------------------------------------------------------------

def read_output(name: str, out: str, paths: list[str]):
    """``{image file name: float16 features}`` of one pass (the 2018 text: float32)."""
    import numpy as np

    if name.startswith("cxrdask"):
        from cxrdask.store.features import STATUS_OK, FeatureStore

        store = FeatureStore.open(out + "/features.zarr")
        names = store.read("image_index")
        ok = store.read("status") == STATUS_OK
        features = store.read("features")
        return {str(n): f for n, f, good in zip(names, features, ok, strict=True) if good}
    if name in ("daft", "ray", "spark"):
        import pyarrow.parquet as pq

        frame = pq.read_table(out).to_pydict()
        vectors = [np.frombuffer(f, np.float16) if isinstance(f, bytes)
                   else np.asarray(f, np.int16).view(np.float16) for f in frame["features"]]
        return {os.path.basename(p): v for p, v in zip(frame["path"], vectors, strict=True)}
    if name == "dataloader":
        stacked = np.concatenate([np.load(f) for f in sorted(glob.glob(out + "/features_*.npy"))])
        return {os.path.basename(p): v for p, v in zip(paths, stacked, strict=True)}
    result = {}
    for part in glob.glob(out + "/features_txt/part-*"):
        for line in Path(part).read_text().splitlines():
            key, *values = line.split(",")
            result[key] = np.asarray(values, np.float32)
    return result


def compare(reference: dict, other: dict) -> float:
    """Largest |difference| between two outputs' features over the images both hold, relative
    to the largest |feature| (float16 holds about 3 significant digits)."""
    import numpy as np

    common = sorted(set(reference) & set(other))
    ref = np.stack([reference[k] for k in common]).astype(np.float32)
    got = np.stack([other[k] for k in common]).astype(np.float32)
    return float(np.abs(ref - got).max() / np.abs(ref).max())


# ---------------------------------------------------------------------------------------
# The compute bound, measured in this run.
# ---------------------------------------------------------------------------------------

def compute_bound(paths: list[str], precision: str, batch: int, cores: int, seconds: float) -> dict:
    """bench_extract's bound: the bare backbone (cxrdask's runner, eager) and read + decode +
    preprocess, each on one thread; N cores bound = N / (1/a + 1/b), with the fastest
    engine's backbone (eager PyTorch, OpenVINO, and in fp32 ONNX Runtime too).

    Also the same measured with every core busy at once (``rates_all_cores``): A and B
    summed over the cores, bound = 1 / (1/A + 1/B). Where the cores do not scale linearly
    (vCPUs sharing a core or its caches) this is the lower, truer ceiling."""
    from benchmarks.common import Config, decode_rate, forward_rate, rates_all_cores

    decode = decode_rate(paths[:32])
    decode_all = rates_all_cores("decode", cores, seconds, paths=paths[:32])
    bound: dict = {"decode_1_thread": decode, "decode_all_cores": decode_all}
    engines = (("torch", "onnxruntime", "openvino") if precision == "fp32"
               else ("torch", "openvino"))
    for engine in engines:
        backbone = forward_rate("cpu", Config(precision, engine=engine), batch, seconds)
        backbone_all = rates_all_cores("backbone", cores, seconds, Config(precision, engine=engine),
                                       batch)
        bound[f"backbone_1_thread_{engine}"] = backbone
        bound[f"backbone_all_cores_{engine}"] = backbone_all
        bound[f"bound_{engine}"] = cores / (1 / backbone + 1 / decode)
        bound[f"bound_all_cores_{engine}"] = 1 / (1 / backbone_all + 1 / decode_all)
    bound["bound_engine"] = max(engines, key=lambda e: bound[f"bound_{e}"])
    bound["bound"] = bound[f"bound_{bound['bound_engine']}"]
    bound["bound_all_cores"] = bound[f"bound_all_cores_{bound['bound_engine']}"]
    return bound


def default_engine(precision: str, images: int, cores: int) -> str:
    """The engine cxrdask's defaults run here at ``precision`` (``engine="auto"``) on a job of
    ``images`` on a local cluster of ``cores`` worker threads."""
    from cxrdask.config import ExtractConfig
    from cxrdask.extract.resolve import local_facts, resolve

    config = ExtractConfig(precision=precision)  # type: ignore[arg-type]
    return resolve(config, [local_facts(config)], images, cores).engine


def engine_used(name: str, out: str) -> str:
    """The engine that ran a pass: what a cxrdask store records, PyTorch for the others."""
    if not name.startswith("cxrdask"):
        return "torch"
    from cxrdask.store.features import FeatureStore

    return FeatureStore.open(out + "/features.zarr").provenance.get("engine", "torch")


# ---------------------------------------------------------------------------------------
# The parent: archive, one child per contender and precision, the table.
# ---------------------------------------------------------------------------------------

def available(name: str) -> str | None:
    """None when the contender can run here, else why not."""
    import importlib.util

    module = {"daft": "daft", "spark": "pyspark",
              "ray": "ray", "spark2018": "pyspark"}.get(name)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install 'cxrdask[bench]')"
    if name.startswith("spark") and shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (Spark needs Java 17)"
    return None


def run_cli(job: dict, workdir: Path) -> dict:
    """``cxrdask extract`` as a user types it (the job's files, its precision and batch, random
    weights; nothing else): end to end from launching the command to its exit; steady state
    is the run's own report (its images over its seconds after the model warm-up), as a
    command line has no second pass in the same process."""
    command = [str(Path(sys.executable).with_name("cxrdask")), "extract", "--images", job["root"],
               "--metadata", job["metadata"], "--store", f"{job['out']}/cxrdask-cli-1/features.zarr",
               "--weights", "random", "--precision", job["precision"],
               "--batch-size", str(job["batch"]), "--quiet"]
    launched = time.time()
    run = subprocess.run(command, capture_output=True, text=True,
                         env={**os.environ, "CXRDASK_CACHE_DIR": str(workdir / "cache")})
    ended = time.time()
    if run.returncode != 0:
        raise RuntimeError(f"cxrdask-cli failed:\n{run.stderr[-3000:]}")
    seconds = next(float(line.split()[1]) for line in run.stdout.splitlines()
                   if line.startswith("time: "))
    return {"end_to_end_s": ended - launched, "first_pass_s": ended - launched,
            "steady_s": seconds, "passes": 1}


def run_contender(name: str, job: dict, workdir: Path) -> dict:
    if name == "cxrdask-cli":
        return run_cli(job, workdir)
    job_file = workdir / f"{name}-job.json"
    job_file.write_text(json.dumps(job))
    repo = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, (repo, os.environ.get("PYTHONPATH"))))  # for its workers
    launched = time.time()
    run = subprocess.run([sys.executable, "-m", "benchmarks.bench_peers", "--child", name,
                          "--job", str(job_file)], capture_output=True, text=True,
                         cwd=repo,
                         env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
                              "PYTHONPATH": path,
                              # A cold start: no ONNX export cached from an earlier run.
                              "CXRDASK_CACHE_DIR": str(workdir / "cache")})
    if run.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{run.stderr[-3000:]}")
    passes = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"pass"')]
    first, second = passes
    return {"end_to_end_s": first["ended"] - launched, "first_pass_s": first["ended"] - first["started"],
            "steady_s": second["ended"] - second["started"], "passes": 2}


def measure(name: str, job: dict, reference) -> dict:
    """One cold start and steady pass of ``name`` on ``job["paths"]``: its seconds, rows
    lost, engine, and (for comparing the next ones) its first pass's features under
    ``output``."""
    paths = job["paths"]
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-peers-{name}-"))
    try:
        timing = run_contender(name, {**job, "out": str(workdir)}, workdir)
        outputs = [read_output(name, f"{workdir}/{name}-{i}", paths)
                   for i in range(1, timing["passes"] + 1)]
        engine = engine_used(name, f"{workdir}/{name}-1")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"end_to_end_s": timing["end_to_end_s"], "steady_s": timing["steady_s"],
            "engine": engine, "rows_lost": max(len(paths) - len(o) for o in outputs),
            "max_rel_diff_vs_cxrdask": compare(reference, outputs[0]) if reference else None,
            "output": outputs[0]}


def contender_row(name: str, precision: str, runs: list[dict], images: int, bound: dict) -> dict:
    """The table's row of a contender: medians of its rounds' seconds (each round's listed)."""
    end_to_end = statistics.median(r["end_to_end_s"] for r in runs)
    steady = statistics.median(r["steady_s"] for r in runs)
    differences = [r["max_rel_diff_vs_cxrdask"] for r in runs if r["max_rel_diff_vs_cxrdask"] is not None]
    row = {"contender": name, "precision": precision, "engine": runs[0]["engine"],
           "end_to_end_img_s": images / end_to_end, "steady_img_s": images / steady,
           "end_to_end_s": end_to_end, "steady_s": steady,
           "rows_lost": max(r["rows_lost"] for r in runs),
           "max_rel_diff_vs_cxrdask": max(differences) if differences else None,
           "steady_of_bound": images / steady / bound["bound"],
           "steady_of_bound_all_cores": images / steady / bound["bound_all_cores"]}
    if len(runs) > 1:
        row["end_to_end_s_rounds"] = ", ".join(f"{r['end_to_end_s']:.2f}" for r in runs)
        row["steady_s_rounds"] = ", ".join(f"{r['steady_s']:.2f}" for r in runs)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic PNGs (default 2,000)")
    parser.add_argument("--size", type=int, default=1024, help="their side (NIH's: 1024)")
    parser.add_argument("--images", help="a real archive's images folder instead (with --metadata)")
    parser.add_argument("--metadata", help="its Data_Entry_2017.csv (cxrdask needs it)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bound-seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every contender, alternated (medians are reported)")
    parser.add_argument("--archive", default=os.path.join(tempfile.gettempdir(), "cxrdask-bench-peers"))
    parser.add_argument("--out", default="benchmarks/results/bench_peers")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.job)
        return

    from benchmarks.common import archive_for
    from cxrdask.archive.images import locate_images
    from cxrdask.archive.kinds.nih import read_metadata

    if args.images:
        if not args.metadata:
            parser.error("--images needs --metadata")
        root, metadata = args.images, args.metadata
    else:
        root, metadata = archive_for(Path(args.archive), args.n, args.size)
    # The job: the rows cxrdask keeps (read_metadata drops implausible ages, as the 2018
    # recipe did), so every contender reads the same files.
    frame = read_metadata(metadata)
    paths = sorted(u for u in locate_images(root).urls_for(frame["image_index"]) if u)
    cores = os.cpu_count() or 1
    rows, bounds = [], {}
    for precision in args.precisions.split(","):
        bounds[precision] = compute_bound(paths, precision, args.batch, cores, args.bound_seconds)
        print(f"{precision} bound: {bounds[precision]}", flush=True)
        names = []
        for name in args.contenders.split(","):
            why = available(name)
            if name == "cxrdask-torch" and default_engine(precision, len(paths), cores) == "torch":
                why = f"the defaults run eager PyTorch in {precision} here: the cxrdask row"
            if why:
                print(f"skipping {name}: {why}", flush=True)
            else:
                names.append(name)
        # Rounds: every contender once per round, in the same order, so a slow spell of a
        # shared machine falls on all of them; medians over the rounds.
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for round_ in range(args.repeats):
            reference = None
            for name in names:
                run = measure(name, {"root": root, "metadata": metadata, "paths": paths,
                                     "precision": precision, "batch": args.batch, "cores": cores},
                              reference)
                if name == "cxrdask":
                    reference = run.pop("output")
                run.pop("output", None)
                runs[name].append(run)
                print({"round": round_ + 1, "contender": name, "precision": precision, **run},
                      flush=True)
        for name in names:
            rows.append(contender_row(name, precision, runs[name], len(paths), bounds[precision]))
            print(rows[-1], flush=True)
    for precision in bounds:
        same = [r for r in rows if r["precision"] == precision]
        ours = next((r for r in same if r["contender"] == "cxrdask"), None)
        peers = [r for r in same if not r["contender"].startswith(("cxrdask", "spark2018"))]
        if ours and peers:
            for kind in ("end_to_end_img_s", "steady_img_s"):
                best = max(peers, key=lambda r: r[kind])
                ours[f"{kind.removesuffix('_img_s')}_vs_best_peer"] = ours[kind] / best[kind]
                ours[f"{kind.removesuffix('_img_s')}_best_peer"] = best["contender"]
    header = (f"bench_peers on {machine()}: {len(paths)} "
              f"PNGs ({'real, ' + root if args.images else f'synthetic {args.size}x{args.size}'}), "
              f"batch {args.batch}, {cores} model copies")
    save_results(args.out, rows, header, {**vars(args), "bounds": bounds})
    print(table(rows, header))


if __name__ == "__main__":
    main()
