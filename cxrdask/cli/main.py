"""The ``cxrdask`` parser and entry point: each command's options, built from the config
dataclasses by :func:`~cxrdask.cli.options.add_options` and the shared definitions of
:mod:`cxrdask.cli.options`; :func:`main` runs one command and returns its exit status.

Only the command being run has its options built: each reads its defaults from its config
(torch-free) or its API function, and building them all took seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable

import cxrdask.cli.commands as commands
from cxrdask import __version__
from cxrdask.choices import ARCHIVE_KINDS, UNCERTAIN_POLICIES, ScoredSplit, values_of
from cxrdask.cli.exit_codes import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_REFUSED, exit_codes_text
from cxrdask.cli.options import (
    HelpFormatter,
    add_cluster,
    add_device,
    add_model,
    add_options,
    add_quiet,
    add_storage,
    api_default,
    source_default,
)
from cxrdask.errors import CxrDaskError
from cxrdask.runtime.interrupt import second_interrupt_exits

COMMANDS = {  # name: one-line help, in the order --help lists them
    "info": "what a feature store or head checkpoint holds (fast); versions and devices without one",
    "verify": "check every chunk of a feature store; list (or clear for recompute) bad ones",
    "synth": "write a synthetic archive in the layout of NIH or of another archive (--layout)",
    "demo": "run everything end to end on a synthetic archive",
    "extract": "images (or a pixel store) -> features in a Zarr store, on a Dask cluster",
    "cache": "decode and resize the images once into a pixel store, for repeated extractions",
    "train": "train the head from a feature store",
    "evaluate": "per-disease AUC report for a checkpoint",
    "study": "how a head travels: train on every store, leave each archive out, score each",
    "overlap": "images of one store that are images of another (or repeats within one store)",
    "shift": "how far apart two archives are: a domain classifier's AUC, prevalences, demographics",
    "index": "build a store's nearest-neighbour index (kept beside it), for similar cases",
    "audit-labels": "rank a store's labels by how likely each is wrong (out-of-fold heads, cleanlab)",
    "neighbours": "the stored images most like one image (a file, a stored image or a row)",
    "predict": "the head's probabilities of its findings for image files",
    "serve": "the single-image web page and its JSON API",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``cxrdask`` parser; with ``only``, just that command's options are built
    (``only=""``: no command's options, for the top-level ``--help``)."""
    epilog = exit_codes_text()
    parser = argparse.ArgumentParser(
        prog="cxrdask", epilog=epilog, formatter_class=HelpFormatter,
        description="Chest X-ray features with Dask and Zarr, and a diagnosis head on them.")
    parser.add_argument("--version", action="version", version=f"cxrdask {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:] + ".",
                                    formatter_class=HelpFormatter, epilog=epilog)
        if only is None or only == name:
            _OPTIONS[name](sub)
            sub.set_defaults(run=getattr(commands, f"cmd_{name.replace('-', '_')}"))
    return parser


def _info_options(info: argparse.ArgumentParser) -> None:
    info.add_argument("target", nargs="?",
                      help="a feature store (.zarr folder or URL) or a head checkpoint (head.pt); "
                           "without one: versions, torch threads, CUDA devices")
    add_storage(info)


def _verify_options(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("store", help="feature store (.zarr folder or URL)")
    verify.add_argument("--repair", action="store_true",
                        help="clear the done markers of damaged chunks, so that a resumed "
                             "`cxrdask extract` recomputes them")
    add_storage(verify)


def _synth_options(synth: argparse.ArgumentParser) -> None:
    from cxrdask.archive.synthetic.spec import SyntheticSpec

    synth.add_argument("root", help="directory or URL to write the archive to")
    synth.add_argument("--n", type=int,
                       default=source_default("archive.synthetic.writer", "make_archive", "n"),
                       help="number of images")
    add_options(synth, SyntheticSpec)
    synth.add_argument("--threads", type=int, help="writer threads (default: one per core)")
    synth.add_argument("--workers", type=int, dest="threads", action=_Renamed,
                       help=argparse.SUPPRESS)  # its name before --threads, for one release
    add_quiet(synth)
    add_storage(synth)


class _Renamed(argparse.Action):
    """An option's old spelling: it still works, for one release, and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"cxrdask: {option_string} is deprecated and goes in the next release: use {new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


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
    add_quiet(demo)


def _extract_options(extract: argparse.ArgumentParser) -> None:
    from cxrdask.config import ExtractConfig

    extract.add_argument("--images", help="the archive's root folder (or URL)")
    extract.add_argument("--source", metavar="PIXELS.zarr",
                         help="read a pixel store (cxrdask cache) instead of --images: no PNG "
                              "decoding; its rows, split and chunks")
    extract.add_argument("--pixels", metavar="PIXELS.zarr",
                         help="also keep the decoded, resized images in this pixel store")
    _image_source_options(extract, "feature store URL (.zarr)")
    add_options(extract, ExtractConfig)  # every ExtractConfig field, its default and its help


def _cache_options(cache: argparse.ArgumentParser) -> None:
    from cxrdask.config import ExtractConfig

    cache.add_argument("--images", required=True, help="the archive's root folder (or URL)")
    _image_source_options(cache, "pixel store URL (.zarr) to make or resume")
    add_options(cache, ExtractConfig, only=commands.CACHE_FIELDS)


def _image_source_options(parser: argparse.ArgumentParser, store_help: str) -> None:
    parser.add_argument("--metadata",
                        help="metadata or label file (default: found under --images)")
    parser.add_argument("--archive", choices=["auto", *ARCHIVE_KINDS], default="auto",
                        help="which archive --images holds (default: detected from its files)")
    parser.add_argument("--uncertain", choices=list(UNCERTAIN_POLICIES), default="missing",
                        help="uncertain labels (CheXpert's -1) count as missing, positive or "
                             "negative")
    parser.add_argument("--store", required=True, help=store_help)
    add_cluster(parser, "the run")
    parser.add_argument("--gpu", action="store_true", help="local GPU cluster (dask-cuda)")
    parser.add_argument("--max-age", type=int,
                        default=source_default("archive.kinds.nih", "read_metadata", "max_age"),
                        help="rows with a greater age are dropped (the real CSV has a few)")
    add_quiet(parser)
    add_storage(parser)


def _train_options(train: argparse.ArgumentParser) -> None:
    from cxrdask.config import TrainConfig

    train.add_argument("--store", required=True, action="append",
                       help="feature store URL; repeat it to train one head on several stores "
                            "(the union of their findings, each store's own split)")
    train.add_argument("--out", required=True, help="directory for head.pt, curves and plots")
    add_options(train, TrainConfig, defaults="preset")
    add_device(train, "where the head trains (chunks are read lazily on the host either way)",
               default=source_default("head.train", "train_head", "device"))
    lrs = source_default("head.train", "grid_search", "lrs")
    wds = source_default("head.train", "grid_search", "weight_decays")
    train.add_argument("--grid", action="store_true", help="grid search lr x weight decay on Dask")
    train.add_argument("--grid-lrs", default=",".join(f"{v:g}" for v in lrs),
                       help="learning rates of the grid")
    train.add_argument("--grid-weight-decays", default=",".join(f"{v:g}" for v in wds),
                       help="weight decays of the grid")
    add_cluster(train, "--grid", layout=False)
    add_quiet(train)
    add_storage(train)


def _evaluate_options(evaluate: argparse.ArgumentParser) -> None:
    from cxrdask.config import EvaluateConfig

    evaluate.add_argument("--store", required=True, help="feature store URL")
    evaluate.add_argument("--checkpoint", required=True, help="head checkpoint (head.pt)")
    evaluate.add_argument("--out", help="directory for report.md, report.json and plots")
    evaluate.add_argument("--split", choices=list(values_of(ScoredSplit)),
                          help="rows to score: a split, or all (every readable row); default: "
                               "all for a store of an archive the head did not train on "
                               "(external validation), else test")
    evaluate.add_argument("--compare", metavar="CHECKPOINT",
                          help="a second head on the same store: paired AUC differences with "
                               "bootstrap intervals and DeLong's test")
    evaluate.add_argument("--compare-store", metavar="STORE",
                          help="the store --compare's head reads, when it was trained on "
                               "another backbone's features of the same images")
    add_options(evaluate, EvaluateConfig)  # its --workers: local processes for --boxes
    add_cluster(evaluate, "--boxes", layout=False, workers=False)
    add_storage(evaluate)


def _study_options(study: argparse.ArgumentParser) -> None:
    from cxrdask.config import EvaluateConfig, TrainConfig

    study.add_argument("--store", required=True, action="append",
                       help="a feature store; two or more, one per archive, of one backbone")
    study.add_argument("--out", required=True,
                       help="new or empty folder for study.md, study.json, study.png, the heads "
                            "and the reports")
    add_options(study, TrainConfig, defaults="preset")
    add_options(study, EvaluateConfig, only=commands.STUDY_EVALUATE_FIELDS)
    add_cluster(study, "the heads' training", layout=False)
    add_storage(study)


def _overlap_options(overlap: argparse.ArgumentParser) -> None:
    overlap.add_argument("first", metavar="A.zarr", help="a feature store")
    overlap.add_argument("second", metavar="B.zarr", nargs="?",
                         help="another feature store (left out: repeats within A.zarr)")
    overlap.add_argument("--out", metavar="PAIRS.csv", help="write every pair to this CSV")
    overlap.add_argument("--threshold", type=float,
                         default=source_default("store.overlap", "find_overlap", "threshold"),
                         help="the details' correlation at or above which two images whose "
                              "thumbnails match are one")
    add_storage(overlap)


def _shift_options(shift: argparse.ArgumentParser) -> None:
    shift.add_argument("first", metavar="A.zarr", help="a feature store")
    shift.add_argument("second", metavar="B.zarr", help="another, of the same backbone")
    shift.add_argument("--out", help="folder for shift.md, shift.json and shift.png")
    shift.add_argument("--sample", type=int,
                       default=source_default("study.shift", "measure_shift", "sample"),
                       help="readable rows drawn from each store for the classifier")
    shift.add_argument("--bootstrap", type=int,
                       default=source_default("study.shift", "measure_shift", "resamples"),
                       help="patient resamples for the AUC's 95%% interval (0: none)")
    shift.add_argument("--seed", type=int, default=0, help="seed of the sample, folds and resamples")
    add_storage(shift)


def _audit_labels_options(audit: argparse.ArgumentParser) -> None:
    from cxrdask.config import TrainConfig

    audit.add_argument("store", metavar="STORE.zarr", help="a feature store")
    audit.add_argument("--out", required=True,
                       help="new or empty folder for label_issues.csv, label_audit.md, "
                            "suspects.png and the fold heads")
    audit.add_argument("--folds", type=int, default=api_default(_audit_labels(), "folds"),
                       help="heads trained by patient folds, each predicting the patients it "
                            "did not see")
    audit.add_argument("--expert-labels", metavar="CSV",
                       help="Google's 2019 expert labels of NIH images: how many top suspects "
                            "the experts label otherwise")
    add_options(audit, TrainConfig, defaults="preset")
    add_cluster(audit, "the fold heads' training", layout=False)
    add_storage(audit)


def _audit_labels():
    from cxrdask.evaluation.label_audit import audit_labels

    return audit_labels


def _index_options(index: argparse.ArgumentParser) -> None:
    index.add_argument("store", metavar="STORE.zarr", help="a feature store")
    index.add_argument("--scheduler", help="address of a running Dask scheduler to build it on "
                                           "(default: this process)")
    add_storage(index)


def _neighbours_options(neighbours: argparse.ArgumentParser) -> None:
    neighbours.add_argument("store", metavar="STORE.zarr", help="a feature store")
    neighbours.add_argument("query", metavar="IMAGE",
                            help="an image file (PNG, JPEG, DICOM; path or URL), a stored "
                                 "image's name, or a row number")
    neighbours.add_argument("-k", type=int, default=api_default(_neighbours(), "k"),
                            help="how many similar images")
    neighbours.add_argument("--csv", help="also write them to this CSV")
    neighbours.add_argument("--weights",
                            help="the store's backbone weights file, when it was made with one")
    add_device(neighbours, "where the backbone runs for an image file")
    add_storage(neighbours)


def _neighbours():
    from cxrdask.store.neighbours import neighbours

    return neighbours


def _predict_options(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("images", nargs="+",
                         help="PNG, JPEG or DICOM files (local paths or URLs)")
    add_model(predict)
    predict.add_argument("--age", type=float, help="years (unknown: 50)")
    predict.add_argument("--sex", choices=["M", "F"], help="unknown: halfway between F and M")
    predict.add_argument("--view", choices=["PA", "AP"], help="unknown: PA")
    predict.add_argument("--csv", help="also write the probabilities to this CSV")


def _serve_options(serve: argparse.ArgumentParser) -> None:
    from cxrdask.imaging.dicom import PROJECTION_MODALITIES

    add_model(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (0.0.0.0 shows the page to other machines)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--max-upload-mb", type=float, default=20.0,
                       help="largest accepted upload in MiB")
    serve.add_argument("--max-concurrent", type=int, default=1,
                       help="images computed at once (each uses every core)")
    serve.add_argument("--modalities", default=",".join(PROJECTION_MODALITIES), metavar="CODES",
                       help="DICOM modalities answered as chest radiographs (default: "
                            "%(default)s); another is refused, naming its modality; or any")
    serve.add_argument("--store", metavar="STORE.zarr",
                       help="a feature store of the head's backbone: each diagnosis lists the "
                            "five stored images most like the upload, with their labels")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning",
                                                               "info", "debug"],
                       help="uvicorn's log level")


_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "info": _info_options, "verify": _verify_options, "synth": _synth_options,
    "demo": _demo_options, "extract": _extract_options, "cache": _cache_options,
    "train": _train_options, "evaluate": _evaluate_options, "study": _study_options,
    "overlap": _overlap_options, "shift": _shift_options,
    "index": _index_options, "neighbours": _neighbours_options,
    "audit-labels": _audit_labels_options,
    "predict": _predict_options,
    "serve": _serve_options}


def _command_of(argv: list[str]) -> str | None:
    """The command named on the command line (its first word that is one), if any."""
    return next((word for word in argv if word in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    """Run one ``cxrdask`` command; its exit status (:data:`~cxrdask.cli.exit_codes.EXIT_CODES`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _stacks_on_sigusr1()
    args = build_parser(only=_command_of(argv) or "").parse_args(argv)
    from cxrdask.progress import show_messages

    # The library logs; the command line prints, for this command only: a main() called
    # in-process (a notebook, a test) leaves no handler on a stream that may close after it.
    handler = show_messages()
    try:
        return _run(args)
    finally:
        logging.getLogger("cxrdask").removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command: its exit status, errors turned into their codes."""
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
    (:func:`~cxrdask.runtime.interrupt.end_process_now`): by then the store is written and
    the cluster's processes have stopped, and an ordinary exit would add 0.7 s of unloading
    modules to every command."""
    from cxrdask.runtime.interrupt import end_process_now

    end_process_now(main())


__all__ = ["COMMANDS", "build_parser", "main", "run"]
