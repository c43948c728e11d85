"""The whole pipeline on a synthetic archive: ``cxrdask demo`` and :func:`run_demo`.

Synthetic archive -> metadata -> splits -> features on a local Dask cluster -> head ->
evaluation. The output folder is checked before anything is written: a folder that holds
a demo made with the same settings is resumed (the archive is kept, finished store chunks
are skipped); one made with other settings, or holding anything else, is refused untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cxrdask.errors import CxrDaskError
from cxrdask.options import renamed

SETTINGS_FILE = "cxrdask-demo.json"


class DemoFolderError(CxrDaskError, FileExistsError):
    """The demo's output folder holds another run, or something that is not a demo."""


@dataclass(frozen=True)
class DemoSettings:
    """What a demo's archive and store depend on; a re-run into the same folder must match."""

    n: int = 400
    size: int = 256
    seed: int = 0
    weights: str = "random"


@dataclass
class DemoResult:
    """Where the demo wrote its parts, and its headline numbers."""

    out: Path
    archive_root: str
    store_url: str
    checkpoint: str
    report_dir: Path
    mean_auc: float
    mean_auc_untrained: float
    resumed: bool


def check_demo_folder(out: Path, settings: DemoSettings) -> bool:
    """True if ``out`` holds a demo of these settings (resume), False if it is new or empty.

    Raises :class:`DemoFolderError` naming ``--out`` when it holds a demo of other settings
    or files that are not a demo's; nothing is written either way.
    """
    marker = out / SETTINGS_FILE
    if marker.exists():
        previous = json.loads(marker.read_text())
        wanted = asdict(settings)
        differences = {k: (previous.get(k), v) for k, v in wanted.items() if previous.get(k) != v}
        if differences:
            listed = ", ".join(f"{k} {old!r} there, {new!r} now" for k, (old, new) in differences.items())
            raise DemoFolderError(
                f"--out {out} holds a demo made with other settings ({listed}); nothing was "
                "changed. Use another --out, or the same settings to resume it")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DemoFolderError(f"--out {out} exists and is not an empty folder or a cxrdask demo; "
                              "nothing was changed. Choose a new or empty folder")
    return False


def run_demo(
    out: str | os.PathLike = "cxrdask-demo",
    *,
    n: int = DemoSettings.n,
    size: int = DemoSettings.size,
    seed: int = DemoSettings.seed,
    weights: str = DemoSettings.weights,
    epochs: int = 30,
    n_workers: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    workers: int | None = None,
) -> DemoResult:
    """Run the pipeline end to end on a synthetic archive of ``n`` images of ``size`` pixels.

    The output folder is checked before anything is written: a demo of the same settings is
    resumed, anything else refused untouched.

    Parameters
    ----------
    out
        Output folder.
    n, size, seed
        The synthetic archive.
    weights
        ``random`` (a fixed-seed ResNet50: runs offline), ``imagenet``, or a ``.pth`` file.
    epochs
        Head training epochs (early stopping may end sooner).
    n_workers
        Local Dask worker processes (default: one per core). ``workers=``, its old name, is
        deprecated.
    progress
        Show progress bars.
    echo
        Receives the step-by-step lines (default: print).

    Returns
    -------
    DemoResult
        Where the archive, store, checkpoint and report are, and the mean AUCs.

    Raises
    ------
    DemoFolderError
        ``out`` holds a demo of other settings, or files that are not a demo's.
    """
    from cxrdask.archive.boxes import BOX_FILE
    from cxrdask.archive.kinds.nih import read_metadata
    from cxrdask.archive.synthetic import make_archive, synthetic_settings
    from cxrdask.archive.synthetic.expert import EXPERT_FILE
    from cxrdask.evaluation.report import evaluate
    from cxrdask.extract.plan import plan_extraction
    from cxrdask.extract.run import run_extraction
    from cxrdask.head.train import TrainConfig, train_head
    from cxrdask.runtime.cluster import local_client

    n_workers = renamed("run_demo", "workers", "n_workers", workers, n_workers)
    out = Path(out)
    settings = DemoSettings(n=n, size=size, seed=seed, weights=weights)
    resumed = check_demo_folder(out, settings)
    archive_root, store = str(out / "archive"), str(out / "features.zarr")
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=1) + "\n")

    if resumed and synthetic_settings(archive_root) is not None:
        echo(f"1/5 synthetic archive: kept from the earlier run under {archive_root}")
        from cxrdask.archive.kinds.nih import find_metadata

        metadata_url = find_metadata(archive_root)
    else:
        echo(f"1/5 synthetic archive: {n} images of {size}x{size} under {archive_root}")
        archive = make_archive(archive_root, n=n, size=size, seed=seed, prevalence="balanced",
                               progress=progress)
        metadata_url = archive.metadata_url
        echo(f"    {archive.images_per_second:.1f} images/s")
    metadata, report = read_metadata(metadata_url, return_report=True)
    echo("2/5 metadata: " + report.summary().replace("\n", "\n    "))
    plan = plan_extraction(metadata, archive_root, store, weights=weights)
    echo(f"3/5 features (ResNet50, {weights} weights) into {store}")
    # One local cluster for the run: extraction, then Grad-CAM localisation in evaluation.
    with local_client(n_workers=n_workers) as client:
        summary = run_extraction(plan, client, progress=progress)
        echo("    " + str(summary).replace("\n", "\n    "))
        echo("4/5 training the head")
        result = train_head(store, TrainConfig(epochs=epochs), out / "head", progress=progress)
        echo(f"    best validation loss {result.best_val_loss:.4f} at epoch {result.best_epoch}")
        echo("5/5 evaluation on the test split")
        # The archive's stand-ins for Google's expert labels and NIH's boxes.
        expert, boxes = Path(archive_root) / EXPERT_FILE, Path(archive_root) / BOX_FILE
        evaluation = evaluate(store, result.checkpoint, out_dir=out / "report",
                              expert_labels=str(expert) if expert.exists() else None,
                              boxes=str(boxes) if boxes.exists() else None,
                              images=archive_root if boxes.exists() else None, client=client,
                              weights=weights if weights.endswith(".pth") else None)
    echo(evaluation.to_markdown())
    echo(f"mean test AUC {evaluation.mean_auc:.3f} (untrained head "
         f"{evaluation.mean_auc_untrained:.3f}); report in {out / 'report'}")
    image = plan.urls[plan.rows["image_index"].iloc[-1]]  # a test image
    if os.path.isabs(image) and Path(image).is_relative_to(Path.cwd()):
        image = os.path.relpath(image)  # as the user's other paths are written
    echo(next_steps(out, result.checkpoint, image, store))
    return DemoResult(out=out, archive_root=archive_root, store_url=store,
                      checkpoint=result.checkpoint, report_dir=out / "report",
                      mean_auc=evaluation.mean_auc,
                      mean_auc_untrained=evaluation.mean_auc_untrained, resumed=resumed)


def _command_prefix() -> str:
    """How this shell reaches the environment's commands: ``.venv/bin/`` when the running
    ``cxrdask`` was called by path (no activated venv), nothing when it is on the PATH."""
    here = Path(sys.executable).parent
    on_path = shutil.which("cxrdask")
    if on_path and Path(on_path).absolute().parent == here.absolute():
        return ""
    try:
        relative = os.path.relpath(here)
    except ValueError:  # another drive (Windows)
        relative = ".."
    return f"{here if relative.startswith('..') else relative}{os.sep}"


def next_steps(out: Path, checkpoint: str, image: str, store: str) -> str:
    """The commands that follow on from a demo, with its real paths."""
    bin_ = _command_prefix()
    return "\n".join([
        "",
        "next steps:",
        f"  what the store holds:   {bin_}cxrdask info {store}",
        f"  predict one image:      {bin_}cxrdask predict {image} --checkpoint {checkpoint}",
        f"  the web page:           {bin_}pip install -e '.[web]'   (in the cxrdask folder), then",
        f"                          {bin_}cxrdask serve --checkpoint {checkpoint}",
        f"  the notebook:           {bin_}pip install -e '.[notebook]', then",
        f"                          {bin_}jupyter lab examples/quickstart.ipynb",
    ])


__all__ = ["DemoFolderError", "DemoResult", "DemoSettings", "check_demo_folder", "next_steps",
           "run_demo"]
