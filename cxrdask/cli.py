"""The ``cxrdask`` command: info, synth, demo, extract, train, evaluate, predict, serve.

Exit status: 0 done; 2 refused (bad input: a CSV row, a missing images folder, weights that
cannot be had, a store made otherwise; nothing is written for a refused run); 3 an
extraction ran but more rows failed than ``--max-failed-fraction`` allows (or all of them;
what was written is kept). Defaults shown by ``--help`` come from the Python API's own.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import inspect
import json
import os
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from cxrdask import __version__
from cxrdask.errors import (
    CxrDaskError,
    ExtractionFailedError,
    ExtractionIncompleteError,
    OptionError,
    StrictFailureError,
)
from cxrdask.extract.interrupt import EXIT_INTERRUPTED, second_interrupt_exits

# The synthetic layouts and archive kinds, spelt here so that --help needs no pandas import
# (tests hold them equal to cxrdask.archive's own lists).
SYNTHETIC_LAYOUTS = ("nih", "chexpert", "mimic-cxr-jpg", "padchest", "vindr-cxr", "rsna-pneumonia")
ARCHIVE_CHOICES = ("auto", "nih", "chexpert", "mimic-cxr-jpg", "padchest", "vindr-cxr",
                   "rsna-pneumonia", "dicom", "csv")
UNCERTAIN_CHOICES = ("missing", "positive", "negative")
EXIT_REFUSED = 2
EXIT_TOO_MANY_FAILED = 3
EXIT_DAMAGED = 4
EXIT_RETRIABLE = 5
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command whose reader went away (128 + SIGPIPE)
EXIT_CODES_HELP = """exit status:
  0  done
  2  refused before any work (bad input; nothing written)
  3  an extraction ran, but more rows failed than --max-failed-fraction allows
     (with --strict: any row; the chunks finished before the stop are kept)
  4  verify found corrupt or missing chunks
  5  an extraction ran, but storage failures left images to read again: run it again
130  interrupted (Ctrl-C): finished chunks are kept; run the same command to resume
141  the output's reader closed early (`cxrdask info STORE | head`)

A run that seems stuck: `kill -USR1 PID` prints where each of its threads is to stderr,
and it goes on; the Dask dashboard's /info page shows the workers' tasks."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (where it has one the help does not already state)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.nargs == 0  # flags: their help says what they do
                or action.default == argparse.SUPPRESS or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def api_default(function, name: str):
    """The default of parameter ``name`` of an API function: the CLI states no default twice."""
    return inspect.signature(function).parameters[name].default


def source_default(module: str, function: str, name: str):
    """:func:`api_default` read from the module's source, for API modules that import torch
    or scikit-learn: each command's ``--help`` answers in well under a second."""
    from cxrdask.source_defaults import source_default as read

    return read(f"cxrdask.{module}", function, name)


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
    parser.add_argument("--workers", type=int,
                        help="local worker processes (default: one per core; one in all, "
                             "with a thread per core, where the backbone runs on the CPU on "
                             "ONNX Runtime or in bf16 on eager PyTorch)")
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="threads per local worker process")
    parser.add_argument("--dashboard-address",
                        default=source_default("extract.cluster", "start_local_cluster", "dashboard_address"),
                        help="where the local cluster's dashboard listens (a busy port is replaced "
                             "by a free one); 0.0.0.0:8787 shows it to other machines")
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
    """A store's or a checkpoint's contents (fast, no torch), or the environment."""
    from cxrdask.info import describe_target, environment_report

    if args.target:
        print(describe_target(args.target, parse_storage_options(args.storage_option)))
    else:
        print(environment_report())
    return 0


def cmd_verify(args) -> int:
    """Read every written chunk; list corrupt or missing ones; with --repair, clear their markers."""
    from cxrdask.store.pixels import open_any_store

    store = open_any_store(args.store, parse_storage_options(args.storage_option),
                                  mode="r+" if args.repair else "r")
    problems = store.verify()
    if problems.empty:
        print(f"{args.store}: every written chunk of {store.n_chunks} reads back intact")
        return 0
    print(problems.to_string(index=False))
    chunks = sorted(set(problems["chunk"]))
    if args.repair:
        store.forget_chunks(chunks)
        print(f"cleared the done markers of chunks {chunks}: `cxrdask extract` with the same "
              "options recomputes them")
        return 0
    print(f"{len(chunks)} chunk(s) damaged: {chunks}; `cxrdask verify {args.store} --repair` "
          "clears their markers so a resumed extraction recomputes them", file=sys.stderr)
    return EXIT_DAMAGED


def cmd_synth(args) -> int:
    from cxrdask.archive.synthetic import make_archive

    archive = make_archive(args.root, n=args.n, size=args.size, seed=args.seed,
                           strength=args.strength, prevalence=args.prevalence,
                           csv_variant=args.csv_variant, layout=args.layout,
                           workers=args.workers,
                           storage_options=parse_storage_options(args.storage_option),
                           progress=not args.quiet)
    print(f"wrote {archive.n_images} images of {archive.n_patients} patients under "
          f"{archive.root} in {archive.seconds:.1f} s ({archive.images_per_second:.1f} images/s, "
          f"{archive.bytes_written / max(archive.n_images, 1) / 1e3:.0f} KB each)")
    print(f"labels: {archive.metadata_url}" if args.layout != "nih"
          else f"metadata: {archive.metadata_url}")
    return 0


def cmd_extract(args) -> int:
    from cxrdask.config import config_from_args
    from cxrdask.extract.run import plan_extraction, plan_from_pixels

    storage_options = parse_storage_options(args.storage_option)
    config = config_from_args(args)
    # Everything that can be checked is checked before a cluster starts.
    if args.source:
        if args.images or args.pixels:
            raise OptionError("--source reads a pixel store instead of the images: leave out "
                              "--images and --pixels")
        plan = plan_from_pixels(args.source, args.store, config, storage_options=storage_options)
    else:
        if not args.images:
            raise OptionError("say where the images are: --images ARCHIVE_ROOT, or --source "
                              "PIXELS.zarr for a pixel store (cxrdask cache)")
        metadata = _read_metadata(args, storage_options)
        plan = plan_extraction(metadata, args.images, args.store, config,
                               storage_options=storage_options, pixels=args.pixels)
    return _run_plan(plan, args)


def cmd_cache(args) -> int:
    from cxrdask.config import config_from_args
    from cxrdask.extract.run import plan_cache

    storage_options = parse_storage_options(args.storage_option)
    metadata = _read_metadata(args, storage_options)
    plan = plan_cache(metadata, args.images, args.store, config_from_args(args, only=CACHE_FIELDS),
                      storage_options=storage_options)
    return _run_plan(plan, args)


def _read_metadata(args, storage_options):
    from cxrdask.archive.kinds import read_archive

    metadata = read_archive(args.images, args.archive, metadata=args.metadata,
                            uncertain=args.uncertain, max_age=args.max_age,
                            storage_options=storage_options)
    print(metadata.attrs["report"])
    return metadata


def _run_plan(plan, args) -> int:
    """Run a checked plan on the cluster the options describe; report; the exit status."""
    from cxrdask.extract.cluster import local_client
    from cxrdask.extract.run import run_extraction

    print(plan.describe(), flush=True)
    try:
        with local_client(args.scheduler, n_workers=args.workers,
                          threads_per_worker=args.threads_per_worker, gpu=args.gpu,
                          dashboard_address=args.dashboard_address,
                          default_layout=plan.local_layout()) as client, \
                _maybe_report(args.performance_report):
            summary = run_extraction(plan, client, progress=not args.quiet)
    except ExtractionIncompleteError as exc:
        print(exc.summary)
        print(f"cxrdask {args.command}: INCOMPLETE: {exc}", file=sys.stderr)
        return EXIT_RETRIABLE
    except StrictFailureError as exc:
        print(f"cxrdask {args.command}: FAILED (--strict): {exc}. The run stopped; the chunks "
              f"finished before it are kept in {args.store}, and a --strict run of it fails "
              f"while it holds failed rows (list them: cxrdask info {args.store}); fix the "
              "images and run again with --retry-failed", file=sys.stderr)
        return EXIT_TOO_MANY_FAILED
    except ExtractionFailedError as exc:
        print(exc.summary)
        print(f"cxrdask {args.command}: FAILED: {exc}. What was written is kept in {args.store}; "
              f"list the failed rows with: cxrdask info {args.store}", file=sys.stderr)
        return EXIT_TOO_MANY_FAILED
    print(summary)
    if summary.rows_failed:
        print(f"{summary.rows_failed} image(s) could not be read ({summary.failed_fraction:.1%} of "
              f"the store, within the allowed {args.max_failed_fraction:.1%}); list them with "
              f"cxrdask info {args.store}")
    return 0


def cmd_train(args) -> int:
    from cxrdask.head.train import TrainConfig, grid_search, train_head

    storage_options = parse_storage_options(args.storage_option)
    config = TrainConfig.preset_config(args.preset, epochs=args.epochs, batch_size=args.batch_size,
                                       lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                                       precision=args.precision,
                                       cuda_graph=False if args.no_cuda_graph else None)
    if args.grid:
        from cxrdask.extract.cluster import local_client

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
                        progress=not args.quiet, device=args.device)
    print(f"best validation loss {result.best_val_loss:.4f} at epoch {result.best_epoch} "
          f"({len(result.history)} epochs, {result.seconds:.1f} s)")
    print("wrote " + ", ".join(result.files))
    return 0


def cmd_evaluate(args) -> int:
    from cxrdask.evaluation.report import evaluate

    with contextlib.ExitStack() as stack:
        client = None
        if args.boxes and args.scheduler:  # else localisation starts its own local cluster
            from cxrdask.extract.cluster import local_client

            client = stack.enter_context(local_client(args.scheduler))
        report = evaluate(args.store, args.checkpoint, split=args.split, out_dir=args.out,
                          stratified=args.stratified,
                          storage_options=parse_storage_options(args.storage_option),
                          compare_to=args.compare, compare_store=args.compare_store,
                          bootstrap=args.bootstrap, seed=args.seed,
                          threshold_rule=args.threshold_rule, specificity=args.specificity,
                          expert_labels=args.expert_labels, boxes=args.boxes, images=args.images,
                          client=client, n_workers=args.workers, weights=args.weights)
    print(report.to_markdown())
    if report.files:
        print("wrote " + ", ".join(report.files))
    return 0


def cmd_predict(args) -> int:
    from cxrdask.serve.inference import predict

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

        from cxrdask.serve.web import create_app
    except ImportError as exc:
        raise CxrDaskError(f"{exc}; the web page needs: pip install 'cxrdask[web]'") from exc
    listener = listening_socket(args.host, args.port)  # a busy port is refused before the model loads
    app = create_app(args.checkpoint, weights=args.weights, device=args.device,
                     max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_concurrent=args.max_concurrent)
    identity = app.state.diagnoser.identity
    print(f"model: {identity['backbone']['name']} ({identity['backbone']['weights']}) + head "
          f"{identity['head']['file']} on {identity['device']}")
    print(f"serving on http://{args.host}:{args.port}/ (API docs: /docs, health: /api/health)",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level=args.log_level))
    server.run(sockets=[listener])
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` for the web server, or a refusal naming the
    address (uvicorn itself would log the error and exit 1 after the model had loaded)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise CxrDaskError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another "
                           "server using that port? choose another with --port") from None
    return listener


def cmd_demo(args) -> int:
    """Synthetic archive -> metadata -> splits -> features -> head -> evaluation, end to end."""
    from cxrdask.demo import run_demo

    run_demo(args.out, n=args.n, size=args.size, seed=args.seed, weights=args.weights,
             epochs=args.epochs, workers=args.workers, progress=not args.quiet)
    return 0


# --------------------------------------------------------------------------- parser


COMMANDS = {  # name: one-line help, in the order --help lists them
    "info": "what a feature store or head checkpoint holds (fast); versions and devices without one",
    "verify": "check every chunk of a feature store; list (or clear for recompute) bad ones",
    "synth": "write a synthetic archive in the NIH layout",
    "demo": "run everything end to end on a synthetic archive",
    "extract": "images (or a pixel store) -> features in a Zarr store, on a Dask cluster",
    "cache": "decode and resize the images once into a pixel store, for repeated extractions",
    "train": "train the head from a feature store",
    "evaluate": "per-disease AUC report for a checkpoint",
    "predict": "14 probabilities for image files",
    "serve": "the single-image web page and its JSON API",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``cxrdask`` parser; with ``only``, just that command's options are built
    (``only=""``: no command's options, for the top-level ``--help``).

    Each command's defaults are read from its API function, which means importing its
    module; building only the command being run keeps ``cxrdask info STORE`` free of torch.
    """
    parser = argparse.ArgumentParser(
        prog="cxrdask", epilog=EXIT_CODES_HELP, formatter_class=_HelpFormatter,
        description="Chest X-ray features with Dask and Zarr, and a diagnosis head on them.")
    parser.add_argument("--version", action="version", version=f"cxrdask {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:] + ".",
                                  formatter_class=_HelpFormatter, epilog=EXIT_CODES_HELP)
        if only is None or only == name:
            _OPTIONS[name](sub)
    return parser


def _info_options(info: argparse.ArgumentParser) -> None:
    info.add_argument("target", nargs="?",
                      help="a feature store (.zarr folder or URL) or a head checkpoint (head.pt); "
                           "without one: versions, torch threads, CUDA devices")
    _add_storage(info)
    info.set_defaults(run=cmd_info)


def _verify_options(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("store", help="feature store (.zarr folder or URL)")
    verify.add_argument("--repair", action="store_true",
                        help="clear the done markers of damaged chunks, so that a resumed "
                             "`cxrdask extract` recomputes them")
    _add_storage(verify)
    verify.set_defaults(run=cmd_verify)


def _synth_options(synth: argparse.ArgumentParser) -> None:
    default = lambda name: source_default("archive.synthetic.writer", "SyntheticSpec", name)  # noqa: E731
    synth.add_argument("root", help="directory or URL to write the archive to")
    synth.add_argument("--n", type=int,
                       default=source_default("archive.synthetic.writer", "make_archive", "n"),
                       help="number of images")
    synth.add_argument("--size", type=int, default=default("size"), help="image side in pixels")
    synth.add_argument("--seed", type=int, default=default("seed"),
                       help="seed of the labels, patients and pixels")
    synth.add_argument("--strength", type=float, default=default("strength"),
                       help="disease sign strength")
    synth.add_argument("--prevalence", choices=["nih", "balanced"], default=default("prevalence"),
                       help="label frequencies: NIH's, or every disease alike")
    synth.add_argument("--csv-variant", choices=["kaggle2017", "v2020", "sample_labels"],
                       default=default("csv_variant"), help="which real metadata CSV to imitate")
    synth.add_argument("--layout", choices=list(SYNTHETIC_LAYOUTS), default=default("layout"),
                       help="whose archive to imitate: its folders, image format and label files")
    synth.add_argument("--workers", type=int, help="writer threads (default: one per core)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage(synth)
    synth.set_defaults(run=cmd_synth)


def _demo_options(demo: argparse.ArgumentParser) -> None:
    from cxrdask.demo import run_demo

    default = lambda name: api_default(run_demo, name)  # noqa: E731
    demo.add_argument("--out", default=default("out"),
                      help="output folder: new, empty, or an earlier demo of the same settings "
                           "(resumed); anything else is refused untouched")
    demo.add_argument("--n", type=int, default=default("n"), help="images in the synthetic archive")
    demo.add_argument("--size", type=int, default=default("size"), help="their side in pixels")
    demo.add_argument("--epochs", type=int, default=default("epochs"),
                      help="head training epochs (early stopping may end sooner)")
    demo.add_argument("--seed", type=int, default=default("seed"), help="the archive's seed")
    demo.add_argument("--workers", type=int, help="local Dask worker processes (default: one per core)")
    demo.add_argument("--weights", default=default("weights"),
                      help="random (a fixed-seed ResNet50: runs offline), imagenet, or a .pth file")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=cmd_demo)


def _extract_options(extract: argparse.ArgumentParser) -> None:
    from cxrdask.config import add_config_options

    extract.add_argument("--images", help="archive root (images/ or images_###/)")
    extract.add_argument("--source", metavar="PIXELS.zarr",
                         help="read a pixel store (cxrdask cache) instead of --images: no PNG "
                              "decoding; its rows, split and chunks")
    extract.add_argument("--pixels", metavar="PIXELS.zarr",
                         help="also keep the decoded, resized images in this pixel store")
    _image_source_options(extract, "feature store URL (.zarr)")
    add_config_options(extract)  # every ExtractConfig field, its default and its help
    extract.set_defaults(run=cmd_extract)


def _cache_options(cache: argparse.ArgumentParser) -> None:
    from cxrdask.config import add_config_options

    cache.add_argument("--images", required=True, help="archive root (images/ or images_###/)")
    _image_source_options(cache, "pixel store URL (.zarr) to make or resume")
    add_config_options(cache, only=CACHE_FIELDS)
    cache.set_defaults(run=cmd_cache)


# The ExtractConfig fields that matter to a pass that only decodes and resizes.
# (the backbone: the size and crop it takes, which a torchxrayvision network fixes)
CACHE_FIELDS = ("backbone", "split", "split_seed", "chunk_rows", "batch_size", "device", "preset",
                "resume", "strict", "max_failed_fraction", "io_threads", "image_size", "resize",
                "pixel_compression")


def _image_source_options(parser: argparse.ArgumentParser, store_help: str) -> None:
    parser.add_argument("--metadata",
                        help="metadata or label file (default: found under --images)")
    parser.add_argument("--archive", choices=ARCHIVE_CHOICES, default="auto",
                        help="which archive --images holds (default: detected from its files)")
    parser.add_argument("--uncertain", choices=UNCERTAIN_CHOICES, default="missing",
                        help="uncertain labels (CheXpert's -1) count as missing, positive or "
                             "negative")
    parser.add_argument("--store", required=True, help=store_help)
    _add_cluster(parser)
    parser.add_argument("--gpu", action="store_true", help="local GPU cluster (dask-cuda)")
    parser.add_argument("--max-age", type=int,
                        default=source_default("archive.metadata", "read_metadata", "max_age"),
                        help="rows with a greater age are dropped (the real CSV has a few)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage(parser)


def _train_options(train: argparse.ArgumentParser) -> None:
    from cxrdask.config import TrainConfig

    preset = TrainConfig()
    train.add_argument("--store", required=True, help="feature store URL")
    train.add_argument("--out", required=True, help="directory for head.pt, curves and plots")
    train.add_argument("--preset", choices=["default", "seed2018"], default=preset.preset,
                       help="seed2018: the 2018 recipe (batch 10, lr 3e-4, no early stopping)")
    for flag, field, kind in (("--epochs", "epochs", int), ("--batch-size", "batch_size", int),
                              ("--lr", "lr", float), ("--weight-decay", "weight_decay", float),
                              ("--seed", "seed", int)):
        train.add_argument(flag, type=kind, default=None,
                           help=f"{field.replace('_', ' ')} (default: the preset's; "
                                f"default preset: {getattr(preset, field)})")
    train.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=preset.precision,
                       help="the head's arithmetic: auto = bf16 where the CPU or GPU computes it "
                            "natively, else fp32 (recorded in the checkpoint)")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"],
                       default=source_default("head.train", "train_head", "device"),
                       help="where the head trains (auto: the GPU where there is one); chunks are "
                            "read lazily on the host either way")
    train.add_argument("--no-cuda-graph", action="store_true",
                       help="on a GPU, run every training step eagerly instead of replaying it "
                            "from one CUDA graph (for debugging; several times slower)")
    lrs = source_default("head.train", "grid_search", "lrs")
    wds = source_default("head.train", "grid_search", "weight_decays")
    train.add_argument("--grid", action="store_true", help="grid search lr x weight decay on Dask")
    train.add_argument("--grid-lrs", default=",".join(f"{v:g}" for v in lrs),
                       help="learning rates of the grid")
    train.add_argument("--grid-weight-decays", default=",".join(f"{v:g}" for v in wds),
                       help="weight decays of the grid")
    train.add_argument("--scheduler", help="Dask scheduler address for --grid")
    train.add_argument("--workers", type=int, help="local worker processes for --grid")
    train.add_argument("--performance-report", metavar="FILE.html",
                       help="Dask's performance report of the --grid run")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage(train)
    train.set_defaults(run=cmd_train)


def _evaluate_options(evaluate: argparse.ArgumentParser) -> None:
    default = lambda name: source_default("config", "EvaluateConfig", name)  # noqa: E731

    evaluate.add_argument("--store", required=True, help="feature store URL")
    evaluate.add_argument("--checkpoint", required=True, help="head checkpoint (head.pt)")
    evaluate.add_argument("--out", help="directory for report.md, report.json and plots")
    evaluate.add_argument("--split", default=source_default("evaluation.report", "evaluate", "split"),
                          choices=["train", "validation", "test"], help="rows to evaluate on")
    evaluate.add_argument("--compare", metavar="CHECKPOINT",
                          help="a second head on the same store: paired AUC differences with "
                               "bootstrap intervals and DeLong's test")
    evaluate.add_argument("--compare-store", metavar="STORE",
                          help="the store --compare's head reads, when it was trained on "
                               "another backbone's features of the same images")
    evaluate.add_argument("--bootstrap", type=int,
                          default=default("bootstrap"),
                          help="patient resamples for the 95%% intervals (0: none)")
    evaluate.add_argument("--stratified", action="store_true",
                          help="draw the AUCs' resamples per finding within patients with and "
                               "without a positive image (pROC's default): none lacks a class")
    evaluate.add_argument("--seed", type=int, default=default("seed"),
                          help="seed of the resampling")
    evaluate.add_argument("--threshold-rule", default=default("threshold_rule"),
                          choices=["youden", "specificity"],
                          help="how each disease's threshold is chosen on the validation split")
    evaluate.add_argument("--specificity", type=float,
                          default=default("specificity"),
                          help="the specificity kept by --threshold-rule specificity")
    evaluate.add_argument("--expert-labels", metavar="CSV",
                          help="Google's 2019 expert labels (google2019_nih-chest-xray-labels.csv"
                               "[.gz]): score Pneumothorax, Nodule or mass and Airspace opacity "
                               "against them")
    evaluate.add_argument("--boxes", metavar="CSV",
                          help="NIH's BBox_List_2017.csv: score Grad-CAM localisation of the "
                               "boxed findings (needs --images; runs on a Dask cluster)")
    evaluate.add_argument("--images", help="the archive's images, for --boxes")
    evaluate.add_argument("--weights", help="backbone weights file, when the head was trained on one")
    evaluate.add_argument("--scheduler", help="Dask scheduler for --boxes (default: a local cluster)")
    evaluate.add_argument("--workers", type=int, help="local worker processes for --boxes")
    _add_storage(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)


def _predict_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("images", nargs="+", help="PNG or JPEG files (local paths or URLs)")
    _add_model(predict)
    predict.add_argument("--age", type=float, help="years (unknown: 50)")
    predict.add_argument("--sex", choices=["M", "F"], help="unknown: halfway between F and M")
    predict.add_argument("--view", choices=["PA", "AP"], help="unknown: PA")
    predict.add_argument("--csv", help="also write the probabilities to this CSV")
    predict.set_defaults(run=cmd_predict)


def _serve_options(serve: argparse.ArgumentParser) -> None:
    _add_model(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (0.0.0.0 shows the page to other machines)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--max-upload-mb", type=float, default=20.0,
                       help="largest accepted upload in MiB")
    serve.add_argument("--max-concurrent", type=int, default=1,
                       help="images computed at once (each uses every core)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning",
                                                               "info", "debug"],
                       help="uvicorn's log level")
    serve.set_defaults(run=cmd_serve)


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="head checkpoint (head.pt)")
    parser.add_argument("--weights", help="backbone weights file, when the head was trained on one")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")


_OPTIONS = {"info": _info_options, "verify": _verify_options, "synth": _synth_options,
            "demo": _demo_options, "extract": _extract_options, "cache": _cache_options,
            "train": _train_options, "evaluate": _evaluate_options, "predict": _predict_options,
            "serve": _serve_options}


def _command_of(argv: list[str]) -> str | None:
    """The command named on the command line (its first word that is one), if any."""
    return next((word for word in argv if word in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _stacks_on_sigusr1()
    # Only the named command's options are built (none for `cxrdask --help`): each reads
    # its defaults from its API module, and importing them all took seconds.
    args = build_parser(only=_command_of(argv) or "").parse_args(argv)
    from cxrdask.progress import show_messages

    show_messages()  # the library logs; the command line prints
    try:
        with second_interrupt_exits(args.command):
            status = args.run(args)
        sys.stdout.flush()  # a reader gone away shows here, inside the handler below
        return status
    except BrokenPipeError:
        # The reader went away (`cxrdask info STORE | head -5`): no traceback, and none
        # again when Python flushes stdout at exit (the Python docs' recipe for SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (CxrDaskError, argparse.ArgumentTypeError, FileNotFoundError) as exc:
        print(f"cxrdask {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print(f"cxrdask {args.command}: interrupted; everything finished so far is kept "
              "(run the same command again to resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stacks_on_sigusr1() -> None:
    """SIGUSR1 prints every thread's stack to stderr, and the command goes on: what a user
    (or a test that timed out) sends a run that seems stuck, to see where it waits."""
    if hasattr(signal, "SIGUSR1") and sys.stderr is not None:
        with contextlib.suppress(ValueError, RuntimeError, OSError, AttributeError):
            faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)


def run() -> None:
    """The ``cxrdask`` command: :func:`main`, then the process ends at once with its status
    (:func:`~cxrdask.extract.interrupt.end_process_now`): by then the store is written and
    the cluster's processes have stopped, and an ordinary exit would add 0.7 s of unloading
    modules to every command."""
    from cxrdask.extract.interrupt import end_process_now

    end_process_now(main())


if __name__ == "__main__":
    run()
