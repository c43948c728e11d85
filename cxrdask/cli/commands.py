"""What each ``cxrdask`` command does with its parsed options: ``cmd_NAME(args)`` calls the
library and returns the exit status (:mod:`cxrdask.cli.exit_codes`). The options themselves
are built in :mod:`cxrdask.cli.main`, from the config dataclasses and
:mod:`cxrdask.cli.options`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from cxrdask.cli.exit_codes import EXIT_DAMAGED, EXIT_DONE, EXIT_RETRIABLE, EXIT_TOO_MANY_FAILED
from cxrdask.cli.options import options_from_args, parse_storage_options
from cxrdask.errors import (
    CxrDaskError,
    ExtractionFailedError,
    ExtractionIncompleteError,
    OptionError,
    StrictFailureError,
)

# The EvaluateConfig fields a study's scores take (its seed is the training's; its views too).
STUDY_EVALUATE_FIELDS = ("bootstrap", "stratified", "threshold_rule", "specificity")
# The ExtractConfig fields that matter to a pass that only decodes and resizes.
# (the backbone: the size and crop it takes, which a torchxrayvision network fixes)
CACHE_FIELDS = ("backbone", "split", "split_seed", "chunk_rows", "batch_size", "device", "preset",
                "resume", "strict", "max_failed_fraction", "io_threads", "image_size", "resize",
                "pixel_compression")


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
    return EXIT_DONE


def cmd_verify(args) -> int:
    """Read every written chunk; list corrupt or missing ones; with --repair, clear their markers."""
    from cxrdask.store.pixels import open_any_store

    store = open_any_store(args.store, storage_options=parse_storage_options(args.storage_option),
                                  mode="r+" if args.repair else "r")
    problems = store.verify()
    if problems.empty:
        print(f"{args.store}: every written chunk of {store.n_chunks} reads back intact")
        return EXIT_DONE
    print(problems.to_string(index=False))
    chunks = sorted(set(problems["chunk"]))
    if args.repair:
        store.forget_chunks(chunks)
        print(f"cleared the done markers of chunks {chunks}: `cxrdask extract` with the same "
              "options recomputes them")
        return EXIT_DONE
    print(f"{len(chunks)} chunk(s) damaged: {chunks}; `cxrdask verify {args.store} --repair` "
          "clears their markers so a resumed extraction recomputes them", file=sys.stderr)
    return EXIT_DAMAGED


def cmd_synth(args) -> int:
    from cxrdask.archive.synthetic import SyntheticSpec, make_archive

    spec = SyntheticSpec(**options_from_args(args, SyntheticSpec))
    archive = make_archive(args.root, n=args.n, spec=spec, threads=args.threads,
                           storage_options=parse_storage_options(args.storage_option),
                           progress=not args.quiet)
    print(f"wrote {archive.n_images} images of {archive.n_patients} patients under "
          f"{archive.root} in {archive.seconds:.1f} s ({archive.images_per_second:.1f} images/s, "
          f"{archive.bytes_written / max(archive.n_images, 1) / 1e3:.0f} KB each)")
    print(f"labels: {archive.metadata_url}" if args.layout != "nih"
          else f"metadata: {archive.metadata_url}")
    return EXIT_DONE


def cmd_extract(args) -> int:
    from cxrdask.config import ExtractConfig
    from cxrdask.extract.plan import plan_extraction, plan_from_pixels

    storage_options = parse_storage_options(args.storage_option)
    config = ExtractConfig(**options_from_args(args, ExtractConfig))
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
    from cxrdask.config import ExtractConfig
    from cxrdask.extract.plan import plan_cache

    storage_options = parse_storage_options(args.storage_option)
    metadata = _read_metadata(args, storage_options)
    config = ExtractConfig(**options_from_args(args, ExtractConfig, only=CACHE_FIELDS))
    plan = plan_cache(metadata, args.images, args.store, config, storage_options=storage_options)
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
    from cxrdask.extract.run import run_extraction
    from cxrdask.runtime.cluster import local_client

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
    return EXIT_DONE


def cmd_train(args) -> int:
    from cxrdask.head.train import TrainConfig, grid_search, train_head

    storage_options = parse_storage_options(args.storage_option)
    chosen = options_from_args(args, TrainConfig)  # None: the preset's
    config = TrainConfig.preset_config(chosen.pop("preset"), **chosen)
    if args.grid:
        from cxrdask.runtime.cluster import local_client

        lrs = [float(v) for v in args.grid_lrs.split(",")]
        wds = [float(v) for v in args.grid_weight_decays.split(",")]
        with local_client(args.scheduler, n_workers=args.workers) as client, \
                _maybe_report(args.performance_report):
            frame = grid_search(args.store, lrs, wds, config=config, out_dir=args.out, client=client,
                                storage_options=storage_options, progress=not args.quiet)
        print(frame.to_string(index=False))
        print(f"best: lr {frame.loc[0, 'lr']:g}, weight decay {frame.loc[0, 'weight_decay']:g}; "
              f"checkpoint {Path(args.out) / 'head.pt'}")
        return EXIT_DONE
    result = train_head(args.store, config, args.out, storage_options=storage_options,
                        progress=not args.quiet, device=args.device)
    print(result.rows_used())
    print(f"best validation loss {result.best_val_loss:.4f} at epoch {result.best_epoch} "
          f"({len(result.history)} epochs, {result.seconds:.1f} s)")
    print("wrote " + ", ".join(result.files))
    return EXIT_DONE


def cmd_evaluate(args) -> int:
    from cxrdask.config import EvaluateConfig
    from cxrdask.evaluation.report import evaluate

    config = EvaluateConfig(**options_from_args(args, EvaluateConfig))
    with contextlib.ExitStack() as stack:
        client = None
        if config.boxes and args.scheduler:  # else localisation starts its own local cluster
            from cxrdask.runtime.cluster import local_client

            client = stack.enter_context(local_client(args.scheduler))
        stack.enter_context(_maybe_report(args.performance_report))
        report = evaluate(args.store, args.checkpoint, config, split=args.split, out_dir=args.out,
                          storage_options=parse_storage_options(args.storage_option),
                          compare_to=args.compare, compare_store=args.compare_store,
                          client=client)
    print(report.to_markdown())
    if report.files:
        print("wrote " + ", ".join(report.files))
    return EXIT_DONE


def cmd_study(args) -> int:
    from cxrdask.config import EvaluateConfig, TrainConfig
    from cxrdask.runtime.cluster import local_client
    from cxrdask.study.table import run_study

    chosen = options_from_args(args, TrainConfig)  # None: the preset's
    config = TrainConfig.preset_config(chosen.pop("preset"), **chosen)
    scoring = EvaluateConfig(**options_from_args(args, EvaluateConfig, only=STUDY_EVALUATE_FIELDS),
                             seed=config.seed, views=config.views)
    with local_client(args.scheduler, n_workers=args.workers) as client, \
            _maybe_report(args.performance_report):
        result = run_study(args.store, args.out, config, scoring, client=client,
                           storage_options=parse_storage_options(args.storage_option))
    print(result.to_markdown())
    print("wrote " + ", ".join(result.files))
    return EXIT_DONE


def cmd_overlap(args) -> int:
    from cxrdask.store.overlap import CANDIDATE_CORRELATION, find_overlap

    pairs = find_overlap(args.first, args.second, threshold=args.threshold,
                         storage_options=parse_storage_options(args.storage_option))
    where = f"{args.second} that are images of {args.first}" if args.second else \
        f"{args.first} that repeat within it"
    print(f"{pairs['b_row'].nunique()} image(s) of {where} ({len(pairs)} pair(s): thumbnails "
          f"correlating at {CANDIDATE_CORRELATION:g} or more, details at {args.threshold:g} or more)")
    if len(pairs):
        print(pairs.head(10).to_string(index=False))
    if args.out:
        pairs.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return EXIT_DONE


def cmd_audit_labels(args) -> int:
    from cxrdask.config import TrainConfig
    from cxrdask.evaluation.label_audit import audit_labels
    from cxrdask.runtime.cluster import local_client

    chosen = options_from_args(args, TrainConfig)  # None: the preset's
    config = TrainConfig.preset_config(chosen.pop("preset"), **chosen)
    with local_client(args.scheduler, n_workers=args.workers) as client:
        audit = audit_labels(args.store, args.out, folds=args.folds, config=config,
                             expert_labels=args.expert_labels, client=client,
                             storage_options=parse_storage_options(args.storage_option))
    print(audit.to_markdown())
    print("wrote " + ", ".join(audit.files))
    return EXIT_DONE


def cmd_index(args) -> int:
    from cxrdask.store.features import FeatureStore
    from cxrdask.store.neighbours import build_index, index_url

    store = FeatureStore.open(args.store, storage_options=parse_storage_options(args.storage_option))
    if args.scheduler:
        from distributed import Client

        from cxrdask.store.neighbours import open_index

        with Client(args.scheduler) as client:
            built = open_index(store, client=client)
    else:
        built = build_index(store)
    print(f"indexed {len(built.rows):,} rows of {store.url} ({store.feature_dim} features, "
          f"centred cosine, exhaustive search in float16) in {built.seconds:.1f} s: {index_url(store)}")
    return EXIT_DONE


def cmd_neighbours(args) -> int:
    import numpy as np

    from cxrdask.store.features import FeatureStore
    from cxrdask.store.neighbours import neighbours, open_index

    store = FeatureStore.open(args.store, storage_options=parse_storage_options(args.storage_option))
    index = open_index(store)
    query: int | str | np.ndarray = args.query
    if args.query.isdigit():
        query = int(args.query)
    elif args.query not in set(index.catalogue(store)["image_index"]):  # a file: its features
        import fsspec

        from cxrdask.serve.inference import image_features

        fs, path = fsspec.core.url_to_fs(args.query)
        if not fs.exists(path):
            raise OptionError(f"{args.query} is not an image of {store.url} (by name or row) nor "
                              "a file")

        query = image_features([args.query], store, weights=args.weights, device=args.device)[0]
    found = neighbours(store, query, args.k, index=index)
    same = found.attrs["query_in_store"]
    print(f"the {len(found)} stored images most like {args.query}"
          + (f" (it is row {same} of the store)" if same is not None else "") + ":")
    print(found.to_string(index=False))
    if args.csv:
        found.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return EXIT_DONE


def cmd_shift(args) -> int:
    from cxrdask.study.shift import measure_shift

    report = measure_shift(args.first, args.second, args.out, sample=args.sample,
                           resamples=args.bootstrap, seed=args.seed,
                           storage_options=parse_storage_options(args.storage_option))
    print(report.to_markdown())
    if report.files:
        print("wrote " + ", ".join(report.files))
    return EXIT_DONE


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
    return EXIT_DONE


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from cxrdask.serve.web import create_app
    except ImportError as exc:
        raise CxrDaskError(f"{exc}; the web page needs: pip install 'cxrdask[web]'") from exc
    listener = listening_socket(args.host, args.port)  # a busy port is refused before the model loads
    app = create_app(args.checkpoint, weights=args.weights, device=args.device,
                     max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_concurrent=args.max_concurrent, modalities=args.modalities,
                     store=args.store)
    identity = app.state.diagnoser.identity
    print(f"model: {identity['backbone']['name']} ({identity['backbone']['weights']}) + head "
          f"{identity['head']['file']} on {identity['device']}")
    print(f"serving on http://{args.host}:{args.port}/ (API docs: /docs, health: /api/health)",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level=args.log_level))
    server.run(sockets=[listener])
    return EXIT_DONE


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
             epochs=args.epochs, n_workers=args.workers, progress=not args.quiet)
    return EXIT_DONE


__all__ = [
    "CACHE_FIELDS",
    "cmd_audit_labels",
    "cmd_cache",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_extract",
    "cmd_index",
    "cmd_info",
    "cmd_neighbours",
    "cmd_overlap",
    "cmd_predict",
    "cmd_serve",
    "cmd_shift",
    "cmd_study",
    "cmd_synth",
    "cmd_train",
    "cmd_verify",
    "listening_socket",
]
