"""The ``cxrdask`` command: info, synth, demo, extract, train, evaluate, predict, serve.

Errors that come from bad input (a CSV row, an image, a store made otherwise) print one
clear message and exit with status 2; nothing is written for a refused run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .errors import CxrDaskError


def parse_storage_options(pairs: list[str] | None) -> dict | None:
    """``key=value`` pairs; a value that parses as JSON is taken as JSON, else as a string."""
    if not pairs:
        return None
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--storage-option wants key=value, not {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec storage option for every URL (repeatable; JSON values parse)")


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    parser.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--performance-report", metavar="FILE.html",
                        help="write Dask's performance report of the run to this file")


@contextmanager
def _maybe_report(path: str | None):
    """Dask's performance report around the work, when asked for."""
    if not path:
        yield
        return
    from distributed import performance_report

    with performance_report(filename=path):
        yield
    print(f"performance report: {path}")


# --------------------------------------------------------------------------- commands


def cmd_info(args) -> int:
    """Versions of the key dependencies, torch threads and CUDA devices."""
    import dask
    import distributed
    import fsspec
    import numpy
    import pandas
    import torch
    import torchvision
    import zarr

    print(f"cxrdask {__version__} on Python {platform.python_version()} ({platform.machine()}, "
          f"{os.cpu_count()} cores)")
    for module in (torch, torchvision, dask, distributed, zarr, fsspec, numpy, pandas):
        print(f"  {module.__name__:<12} {module.__version__}")
    print(f"  torch threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"  CUDA device {i}: {torch.cuda.get_device_name(i)}")
    else:
        print("  CUDA devices: none")
    return 0


def cmd_synth(args) -> int:
    from .synthetic import make_archive

    archive = make_archive(args.root, n=args.n, size=args.size, seed=args.seed,
                           strength=args.strength, prevalence=args.prevalence,
                           csv_variant=args.csv_variant, workers=args.workers,
                           storage_options=parse_storage_options(args.storage_option),
                           progress=not args.quiet)
    print(f"wrote {archive.n_images} images of {archive.n_patients} patients under "
          f"{archive.root} in {archive.seconds:.1f} s ({archive.images_per_second:.1f} images/s, "
          f"{archive.bytes_written / max(archive.n_images, 1) / 1e3:.0f} KB each)")
    print(f"metadata: {archive.metadata_url}")
    return 0


def _metadata_url(args) -> str:
    if args.metadata:
        return args.metadata
    from .metadata import find_metadata

    return find_metadata(args.images, parse_storage_options(args.storage_option))


def cmd_extract(args) -> int:
    from .cluster import local_client
    from .extract import extract_features
    from .metadata import read_metadata

    storage_options = parse_storage_options(args.storage_option)
    metadata, report = read_metadata(_metadata_url(args), storage_options, max_age=args.max_age,
                                     return_report=True)
    print(report.summary())
    with local_client(args.scheduler, n_workers=args.workers,
                      threads_per_worker=args.threads_per_worker, gpu=args.gpu) as client, \
            _maybe_report(args.performance_report):
        summary = extract_features(
            metadata, args.images, args.store, client=client, split=args.split,
            split_seed=args.seed, chunk_rows=args.chunk_rows, batch_size=args.batch_size,
            backbone=args.backbone, weights=args.weights, weights_seed=args.seed,
            device=args.device, dtype=args.dtype, precision=args.precision, engine=args.engine,
            compile=args.compile, preset=args.preset, resume=not args.overwrite,
            strict=args.strict, storage_options=storage_options, progress=not args.quiet)
    print(summary)
    if summary.rows_failed:
        print(f"{summary.rows_failed} image(s) could not be read; list them with "
              f"FeatureStore.open({args.store!r}).failures()")
    return 0


def cmd_train(args) -> int:
    from .train import TrainConfig, grid_search, train_head

    storage_options = parse_storage_options(args.storage_option)
    config = TrainConfig.preset_config(args.preset, epochs=args.epochs, batch_size=args.batch_size,
                                       lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
    if args.grid:
        from .cluster import local_client

        lrs = [float(v) for v in args.grid_lrs.split(",")]
        wds = [float(v) for v in args.grid_weight_decays.split(",")]
        with local_client(args.scheduler, n_workers=args.workers) as client, \
                _maybe_report(args.performance_report):
            frame = grid_search(args.store, lrs, wds, base=config, out_dir=args.out, client=client,
                                storage_options=storage_options, progress=not args.quiet)
        print(frame.to_string(index=False))
        print(f"best: lr {frame.loc[0, 'lr']:g}, weight decay {frame.loc[0, 'weight_decay']:g}; "
              f"checkpoint {Path(args.out) / 'head.pt'}")
        return 0
    result = train_head(args.store, config, args.out, storage_options=storage_options,
                        progress=not args.quiet)
    print(f"best validation loss {result.best_val_loss:.4f} at epoch {result.best_epoch} "
          f"({len(result.history)} epochs, {result.seconds:.1f} s)")
    print("wrote " + ", ".join(result.files))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate

    report = evaluate(args.store, args.checkpoint, split=args.split, out_dir=args.out,
                      storage_options=parse_storage_options(args.storage_option))
    print(report.to_markdown())
    if report.files:
        print("wrote " + ", ".join(report.files))
    return 0


def cmd_predict(args) -> int:
    from .evaluation import predict

    frame = predict(args.images, args.checkpoint, weights=args.weights, age=args.age, sex=args.sex,
                    view=args.view, device=args.device)
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    shown = frame.set_index("image").T
    shown.index.name = "finding"
    print(shown.round(3).to_string())
    return 0


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .web import create_app
    except ImportError as exc:
        raise CxrDaskError(f"{exc}; the web page needs: pip install 'cxrdask[web]'") from exc
    app = create_app(args.checkpoint, weights=args.weights, device=args.device,
                     max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_concurrent=args.max_concurrent)
    identity = app.state.diagnoser.identity
    print(f"model: {identity['backbone']['name']} ({identity['backbone']['weights']}) + head "
          f"{identity['head']['file']} on {identity['device']}")
    print(f"serving on http://{args.host}:{args.port}/ (API docs: /docs, health: /api/health)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_demo(args) -> int:
    """Synthetic archive -> metadata -> splits -> features -> head -> evaluation, end to end."""
    from .evaluation import evaluate
    from .extract import extract_features
    from .metadata import read_metadata
    from .synthetic import make_archive
    from .train import TrainConfig, train_head

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"1/5 synthetic archive: {args.n} images of {args.size}x{args.size} under {out}/archive")
    archive = make_archive(str(out / "archive"), n=args.n, size=args.size, seed=args.seed,
                           prevalence="balanced", progress=not args.quiet)
    print(f"    {archive.images_per_second:.1f} images/s")
    metadata, report = read_metadata(archive.metadata_url, return_report=True)
    print("2/5 metadata: " + report.summary().replace("\n", "\n    "))
    store = str(out / "features.zarr")
    print(f"3/5 features (ResNet50, {args.weights} weights) into {store}")
    summary = extract_features(metadata, archive.root, store, weights=args.weights,
                               chunk_rows=64, n_workers=args.workers, progress=not args.quiet)
    print("    " + str(summary).replace("\n", "\n    "))
    print("4/5 training the head")
    result = train_head(store, TrainConfig(epochs=args.epochs), out / "head",
                        progress=not args.quiet)
    print(f"    best validation loss {result.best_val_loss:.4f} at epoch {result.best_epoch}")
    print("5/5 evaluation on the test split")
    evaluation = evaluate(store, result.checkpoint, out_dir=out / "report")
    print(evaluation.to_markdown())
    print(f"mean test AUC {evaluation.mean_auc:.3f} (untrained head "
          f"{evaluation.mean_auc_untrained:.3f}); report in {out / 'report'}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrdask",
        description="Chest X-ray features with Dask and Zarr, and a diagnosis head on them.")
    parser.add_argument("--version", action="version", version=f"cxrdask {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions, torch threads, CUDA devices")
    info.set_defaults(run=cmd_info)

    synth = commands.add_parser("synth", help="write a synthetic archive in the NIH layout")
    synth.add_argument("root", help="directory or URL to write the archive to")
    synth.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    synth.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--strength", type=float, default=1.0, help="disease sign strength")
    synth.add_argument("--prevalence", choices=["nih", "balanced"], default="nih")
    synth.add_argument("--csv-variant", choices=["kaggle2017", "v2020", "sample_labels"],
                       default="kaggle2017")
    synth.add_argument("--workers", type=int, help="processes (default: one per core)")
    synth.add_argument("--quiet", action="store_true")
    _add_storage(synth)
    synth.set_defaults(run=cmd_synth)

    demo = commands.add_parser("demo", help="run everything end to end on a synthetic archive")
    demo.add_argument("--out", default="cxrdask-demo", help="output directory")
    demo.add_argument("--n", type=int, default=400)
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int)
    demo.add_argument("--weights", default="random",
                      help="random (offline default), imagenet, or a .pth file")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=cmd_demo)

    extract = commands.add_parser("extract", help="images -> features in a Zarr store")
    extract.add_argument("--images", required=True, help="archive root (images/ or images_###/)")
    extract.add_argument("--metadata", help="metadata CSV (default: found under --images)")
    extract.add_argument("--store", required=True, help="feature store URL (.zarr)")
    _add_cluster(extract)
    extract.add_argument("--gpu", action="store_true", help="local GPU cluster (dask-cuda)")
    extract.add_argument("--chunk-rows", type=int, default=512, help="rows per chunk and task")
    extract.add_argument("--batch-size", type=int, default=8)
    extract.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    extract.add_argument("--backbone", choices=["resnet50", "densenet121", "resnet18"],
                         default="resnet50")
    extract.add_argument("--weights", default="imagenet",
                         help="imagenet | a torchvision enum name | PATH.pth | random")
    extract.add_argument("--device", default="auto", help="cpu | cuda | auto")
    extract.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    extract.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    extract.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch",
                         help="run the backbone with PyTorch, or with ONNX Runtime (CPU, fp32; "
                              "pip install 'cxrdask[onnx]')")
    extract.add_argument("--preset", choices=["default", "seed2018"], default="default")
    extract.add_argument("--split", choices=["auto", "official", "patient", "random"],
                         default="auto")
    extract.add_argument("--seed", type=int, default=0, help="split and random-weights seed")
    extract.add_argument("--max-age", type=int, default=123)
    extract.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    extract.add_argument("--overwrite", action="store_true",
                         help="start the store afresh instead of resuming")
    extract.add_argument("--quiet", action="store_true")
    _add_storage(extract)
    extract.set_defaults(run=cmd_extract)

    train = commands.add_parser("train", help="train the head from a feature store")
    train.add_argument("--store", required=True)
    train.add_argument("--out", required=True, help="directory for head.pt, curves and plots")
    train.add_argument("--preset", choices=["default", "seed2018"], default="default")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--grid", action="store_true", help="grid search lr x weight decay on Dask")
    train.add_argument("--grid-lrs", default="1e-4,3e-4,1e-3")
    train.add_argument("--grid-weight-decays", default="0,1e-5,1e-4")
    train.add_argument("--scheduler", help="Dask scheduler address for --grid")
    train.add_argument("--workers", type=int, help="local worker processes for --grid")
    train.add_argument("--performance-report", metavar="FILE.html",
                       help="Dask's performance report of the --grid run")
    train.add_argument("--quiet", action="store_true")
    _add_storage(train)
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("evaluate", help="per-disease AUC report for a checkpoint")
    evaluate.add_argument("--store", required=True)
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--out", help="directory for report.md, report.json and plots")
    evaluate.add_argument("--split", default="test")
    _add_storage(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    predict = commands.add_parser("predict", help="14 probabilities for image files")
    predict.add_argument("images", nargs="+", help="PNG or JPEG files (local paths or URLs)")
    _add_model(predict)
    predict.add_argument("--age", type=float, help="years (unknown: 50)")
    predict.add_argument("--sex", choices=["M", "F"])
    predict.add_argument("--view", choices=["PA", "AP"])
    predict.add_argument("--csv", help="also write the probabilities to this CSV")
    predict.set_defaults(run=cmd_predict)

    serve = commands.add_parser("serve", help="the single-image web page and its JSON API")
    _add_model(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=20.0,
                       help="largest accepted upload in MiB (default 20)")
    serve.add_argument("--max-concurrent", type=int, default=1,
                       help="images computed at once (each uses every core; default 1)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning",
                                                               "info", "debug"])
    serve.set_defaults(run=cmd_serve)
    return parser


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="head checkpoint (head.pt)")
    parser.add_argument("--weights", help="backbone weights file, when the head was trained on one")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CxrDaskError, argparse.ArgumentTypeError, FileNotFoundError) as exc:
        print(f"cxrdask {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
