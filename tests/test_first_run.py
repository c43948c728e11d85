"""A newcomer's first ten minutes, run as they run it: commands as subprocesses, snippets as files.

Each test here stands for a defect a new user hit (a script that crashed without a
``__main__`` guard, a demo re-run that destroyed the earlier run, a wrong ``--images`` path
that reported success, next steps with wrong paths, one worker doing most of a small job)
or for friction they met (slow ``info``, help without defaults, the dashboard on every
interface).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from helpers import ENV, ROOT, cxrdask, tree_digest

from cxrdask.store.features import FeatureStore

# --------------------------------------------------------------------------- scripts without a guard


def test_make_archive_in_a_plain_script_needs_no_main_guard(tmp_path):
    """Defect 1: make_archive used spawned processes, so a script without an
    ``if __name__ == "__main__":`` guard died with BrokenProcessPool. It now uses threads."""
    script = tmp_path / "example.py"
    script.write_text('from cxrdask import make_archive\n\n'
                      'archive = make_archive("archive", n=24, size=64, threads=2)\n'
                      'print("wrote", archive.n_images)\n')
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr
    assert "wrote 24" in run.stdout and "bootstrapping" not in run.stderr
    assert len(list((tmp_path / "archive").rglob("*.png"))) == 24


# --------------------------------------------------------------------------- wrong inputs


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from cxrdask.archive.synthetic import make_archive

    root = tmp_path_factory.mktemp("first-run") / "archive"
    return make_archive(str(root), n=40, size=64, seed=5, threads=2)


def test_wrong_images_path_is_refused_before_a_cluster_starts(archive, tmp_path):
    """Defect 3: ``--images /nonexistent`` exited 0 with every row failed and left a store."""
    store = tmp_path / "f.zarr"
    started = time.perf_counter()
    run = cxrdask("extract", "--images", tmp_path / "nonexistent", "--metadata",
                  archive.metadata_url, "--store", store, "--weights", "random")
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"the images folder {tmp_path / 'nonexistent'} does not exist" in run.stderr
    assert "Dask dashboard" not in run.stdout and "Traceback" not in run.stderr
    assert not store.exists()
    assert time.perf_counter() - started < 60

    (tmp_path / "empty").mkdir()
    run = cxrdask("extract", "--images", tmp_path / "empty", "--metadata", archive.metadata_url,
                  "--store", store, "--weights", "random")
    assert run.returncode == 2
    assert re.search(r"none of the \d+ images named in .*Data_Entry_2017.csv is under", run.stderr)
    assert not store.exists()


def test_missing_images_beyond_the_threshold_are_refused_up_front(archive, tmp_path):
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(archive.root, root)
    pngs = sorted(root.rglob("*.png"))
    for path in pngs[:6]:  # 15% of 40
        path.unlink()
    run = cxrdask("extract", "--images", root, "--store", tmp_path / "f.zarr", "--weights", "random")
    assert run.returncode == 2
    assert re.search(r"6 of the \d+ images named in .* are not under", run.stderr)
    assert "above the allowed 5.0%" in run.stderr and "--max-failed-fraction" in run.stderr
    assert not (tmp_path / "f.zarr").exists()


def _download_server_reachable() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_unavailable_weights_are_refused_at_once_offline(archive, tmp_path):
    """Defect 3: without ``--weights``, extract spent 35 s trying to download ImageNet weights
    on every worker and printed a Dask traceback."""
    if _download_server_reachable():
        pytest.skip("online: the weights could be downloaded, so nothing to refuse")
    env = {**ENV, "TORCH_HOME": str(tmp_path / "empty-torch-home")}
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "cxrdask.cli", "extract", "--images", archive.root,
                          "--store", str(tmp_path / "f.zarr")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 2
    assert "weights ResNet50_Weights.IMAGENET1K_V1 are not in the local cache" in run.stderr
    assert "Dask dashboard" not in run.stdout and "Traceback" not in run.stderr
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "f.zarr").exists()


@pytest.mark.slow
def test_failed_rows_above_the_threshold_exit_non_zero_and_keep_the_store(archive, tmp_path):
    """Defect 3: a run in which rows failed exited 0 whatever their number."""
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(archive.root, root)
    pngs = sorted(root.rglob("*.png"))
    for path in pngs[:4]:  # 10% of the rows: undecodable
        path.write_bytes(b"not a png")
    store = tmp_path / "f.zarr"
    common = ["extract", "--images", root, "--store", store, "--weights", "random",
              "--workers", 2, "--quiet"]
    run = cxrdask(*common)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "FAILED" in run.stderr and "above the allowed 5.0%" in run.stderr
    assert "not a PNG, JPEG or DICOM image" in run.stdout  # the summary names each failed file
    opened = FeatureStore.open(str(store))
    assert opened.is_complete() and len(opened.failures()) == 4
    # Allowing more failures, the same store is accepted (nothing to recompute).
    run = cxrdask(*common, "--max-failed-fraction", 0.2)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipped as already done" in run.stdout

    for path in sorted(root.rglob("*.png")):
        path.write_bytes(b"not a png")
    everything = cxrdask(*common[:3], "--store", tmp_path / "all-failed.zarr", *common[5:])
    assert everything.returncode == 3 and "every row failed" in everything.stderr


# --------------------------------------------------------------------------- chunk size


def test_auto_chunk_rows_gives_every_worker_several_tasks():
    """Defect 5: 599 rows became tasks of 512 and 87, so one of two workers did 86%."""
    from cxrdask.extract.layout import MAX_AUTO_CHUNK_ROWS, auto_chunk_rows

    for rows, threads in [(599, 2), (80, 2), (2_000, 16), (112_120, 2), (112_120, 64), (7, 4)]:
        chunk = auto_chunk_rows(rows, threads, batch_size=8)
        tasks = -(-rows // chunk)
        assert chunk % 8 == 0 and 8 <= chunk <= MAX_AUTO_CHUNK_ROWS
        # at least two tasks per worker thread, unless the rows are too few or chunks are capped
        assert tasks >= min(2 * threads, -(-rows // 8)) or chunk == MAX_AUTO_CHUNK_ROWS, (rows, threads)
    assert auto_chunk_rows(599, 2, batch_size=8) <= 80  # eight tasks of at most 80 rows
    assert auto_chunk_rows(112_120, 2, batch_size=8) == MAX_AUTO_CHUNK_ROWS


@pytest.mark.slow
def test_default_chunk_rows_balance_both_workers_and_resume(archive, tmp_path):
    store = tmp_path / "f.zarr"
    run = cxrdask("extract", "--images", archive.root, "--store", store, "--weights", "random",
                  "--workers", 2, "--quiet")
    assert run.returncode == 0, run.stderr
    opened = FeatureStore.open(str(store))
    assert opened.chunk_rows == 8 and opened.n_chunks >= 5  # 40 rows, 2 workers
    table = run.stdout.split("seconds per stage and worker:")[1]
    per_worker = re.findall(r"^[ \t]+(\d+)[ \t]+(\d+)[ \t]+[\d.]+[ \t]", table, re.M)
    images = [int(n) for _, n in per_worker]
    assert len(images) == 2 and min(images) >= 0.25 * sum(images), run.stdout
    again = cxrdask("extract", "--images", archive.root, "--store", store, "--weights", "random",
                    "--workers", 1, "--quiet")  # another cluster size: the store keeps its chunks
    assert again.returncode == 0 and "0 run," in again.stdout and "skipped as already done" in again.stdout


# --------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_demo_runs_as_documented_then_reruns_resume_or_refuse_untouched(tmp_path):
    """The first run of docs/index.md, exactly as written there (the docs test leaves it to
    us); then defects 2 and 4: a demo re-run with other --n/--size rewrote the archive before
    stopping; the README's next commands assumed other paths."""
    index = (ROOT / "docs" / "index.md").read_text()
    command = next(line for line in index.splitlines() if line.startswith("cxrdask demo "))
    assert "<!-- not-run: run-by-test -->\n```bash\n" + command in index
    assert command.split()[1:4] == ["demo", "--out", "demo-run"] and "--n 200 " in command
    out = tmp_path / "demo-run"
    first = cxrdask(*command.split()[1:], "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "5/5 evaluation on the test split" in first.stdout and "mean test AUC" in first.stdout
    # What the page says to expect: the trained head clearly beats the untrained one (issue:
    # the first settings gave 0.533 against 0.733, and a newcomer thought it broken).
    report = json.loads((out / "report" / "report.json").read_text())
    trained, untrained = report["mean_auc"], report["mean_auc_untrained"]
    assert trained > untrained + 0.15 and abs(trained - 0.74) < 0.05, (trained, untrained)
    for name in ("report.md", "report.json", "roc.png", "auc_bars.png"):
        assert (out / "report" / name).exists()
    assert FeatureStore.open(str(out / "features.zarr")).is_complete()
    before = tree_digest(out)

    other = cxrdask("demo", "--out", out, "--n", 60, "--size", 96, "--epochs", 2, "--quiet",
                    cwd=tmp_path)
    assert other.returncode == 2
    assert f"--out {out} holds a demo made with other settings" in other.stderr
    assert "n 200 there, 60 now" in other.stderr
    assert tree_digest(out) == before  # nothing written, nothing lost

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    refused = cxrdask("demo", "--out", tmp_path / "notes", "--quiet", cwd=tmp_path)
    assert refused.returncode == 2 and "not an empty folder or a cxrdask demo" in refused.stderr
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]

    same = cxrdask(*command.split()[1:], "--quiet", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert "kept from the earlier run" in same.stdout and "0 run," in same.stdout
    assert {k: v for k, v in tree_digest(out).items() if k.startswith("archive/")} == \
        {k: v for k, v in before.items() if k.startswith("archive/")}

    # The printed next steps run as printed, from where the demo was run.
    steps = same.stdout.split("next steps:")[1]
    predict = re.search(r"predict one image:\s+(.+)", steps).group(1)
    info = re.search(r"what the store holds:\s+(.+)", steps).group(1)
    for command in (predict, info):
        run = subprocess.run(shlex.split(command), cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env=ENV)
        assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
    assert "Cardiomegaly" in subprocess.run(shlex.split(predict), cwd=tmp_path, capture_output=True,
                                            text=True, timeout=300, env=ENV).stdout
    assert "serve --checkpoint demo-run/head/head.pt" in steps  # as given: --out demo-run


# --------------------------------------------------------------------------- cxrdask info


@pytest.mark.slow
def test_info_on_a_store_and_a_checkpoint_is_fast_and_imports_no_torch(trained_checkpoint):
    store = json.dumps(str(Path(trained_checkpoint).parent.parent / "features.zarr"))
    checkpoint = json.dumps(trained_checkpoint)
    probe = ("import sys, time\nfrom cxrdask.cli import main\n"
             f"for target in ({store}, {checkpoint}):\n"
             "    started = time.perf_counter()\n"
             "    assert main(['info', target]) == 0\n"
             "    print('seconds', time.perf_counter() - started)\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "torch imported: False" in out
    assert re.search(r"rows: \d+ ok, 0 failed, 0 pending", out) and "resnet50 (random, seed 0)" in out
    assert "train " in out and "test " in out and "size on disk" in out
    assert "head: 2050 inputs (2048 features + age, sex) -> 14 findings" in out
    assert all(float(s) < 2.0 for s in re.findall(r"seconds ([\d.]+)", out)), out
    missing = cxrdask("info", "/nonexistent/store.zarr")
    assert missing.returncode == 2 and "no feature store or checkpoint at" in missing.stderr


# --------------------------------------------------------------------------- help and defaults


def test_help_shows_defaults_that_come_from_the_api():
    import dataclasses
    import inspect

    from cxrdask.cli import build_parser
    from cxrdask.config import ExtractConfig
    from cxrdask.demo import run_demo

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    extract_options = {a.dest: a for a in commands["extract"]._actions}
    for item in dataclasses.fields(ExtractConfig):  # every config field is an option, one default
        assert extract_options[item.name].default == item.default, item.name
        assert extract_options[item.name].help == item.metadata["help"], item.name
    signature = inspect.signature(run_demo).parameters
    for action in commands["demo"]._actions:
        if action.dest in signature and action.option_strings:
            assert action.default == signature[action.dest].default, action.dest
    extract_help = cxrdask("extract", "--help").stdout
    for text in ("(default: auto)", "(default: 0.05)", "--split-seed", "--weights-seed",
                 "(default: 127.0.0.1:8787)"):
        assert text in extract_help, text
    demo_help = cxrdask("demo", "--help").stdout
    assert "(default: 400)" in demo_help and "(default: 256)" in demo_help
    for command in commands:
        for action in commands[command]._actions:
            assert action.help, f"cxrdask {command} {action.option_strings}: no help"


# --------------------------------------------------------------------------- the dashboard


@pytest.mark.slow
def test_dashboard_listens_on_loopback_and_moves_off_a_busy_port():
    import psutil

    from cxrdask.runtime.cluster import DEFAULT_DASHBOARD, local_client

    host, port = DEFAULT_DASHBOARD.split(":")
    blocker = socket.socket()
    with contextlib.suppress(OSError):  # if someone else holds the port, the situation is the same
        blocker.bind((host, int(port)))  # the default port is taken (another cluster, say)
        blocker.listen()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with local_client(n_workers=1, announce=False) as client:
                link = client.dashboard_link
                dashboard_port = int(re.search(r":(\d+)/", link).group(1))
                listening = [c.laddr for c in psutil.Process().net_connections("tcp")
                             if c.status == psutil.CONN_LISTEN and c.laddr.port == dashboard_port]
    finally:
        blocker.close()
    assert link.startswith("http://127.0.0.1:") and dashboard_port != int(port)
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
    assert not [w for w in caught if "already in use" in str(w.message)]


# --------------------------------------------------------------------------- plots and reports


def test_plots_use_distinct_colours_name_aucs_and_keep_the_backend():
    import matplotlib
    import numpy as np
    import pandas as pd

    from cxrdask.archive.labels import LABELS
    from cxrdask.plots import FINDING_COLOURS, auc_bars_figure, roc_figure

    matplotlib.use("svg")  # a user's own backend choice
    assert len(set(FINDING_COLOURS.values())) == len(LABELS) == 14
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 14)) < 0.3).astype(np.uint8)
    targets[:, 3] = 0  # a disease without positives in the split
    figure = roc_figure(targets, rng.random((200, 14)), caveat="Synthetic archive: not comparable")
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert len(legend) == 14 and legend[3] == f"{LABELS[3]}: n/a (0 pos.)"
    assert all(re.search(r": (0\.\d{3}|n/a) \(\d+ pos\.\)$", text) for text in legend)
    assert any("not comparable" in t.get_text() for t in figure.texts)
    table = pd.DataFrame({"label": list(LABELS), "auc": [np.nan] + [0.7] * 13,
                          "wang2017": [0.8] * 14, "chexnet": [0.85] * 14})
    bars = auc_bars_figure(table)
    assert "n/a" in [t.get_text() for t in bars.axes[0].texts]
    assert matplotlib.get_backend() == "svg"
    library = "\n".join(p.read_text() for p in (ROOT / "cxrdask").rglob("*.py"))
    assert not re.search(r"^\s*(import matplotlib\.pyplot|from matplotlib import pyplot|"
                         r"matplotlib\.use\()", library, re.M)


def test_report_mean_covers_the_same_diseases_in_every_column():
    import numpy as np
    import pandas as pd

    from cxrdask.archive.labels import LABELS
    from cxrdask.evaluation.report import CHEXNET_2017, WANG_2017, EvaluationReport

    auc = np.full(14, 0.8)
    auc[[2, 5]] = np.nan  # no positives for two diseases
    table = pd.DataFrame({"label": list(LABELS), "positives": [20] * 14, "auc": auc,
                          "auc_untrained": [0.5] * 14,
                          "wang2017": [WANG_2017[n] for n in LABELS],
                          "chexnet": [CHEXNET_2017[n] for n in LABELS]})
    report = EvaluationReport(table, "test", "patient split", 300,
                              caveats=["synthetic archive", "random-weight backbone"])
    kept = [n for i, n in enumerate(LABELS) if i not in (2, 5)]
    assert report.mean_over == kept
    assert report.to_json()["mean_wang2017"] == pytest.approx(np.mean([WANG_2017[n] for n in kept]))
    markdown = report.to_markdown()
    assert markdown.startswith("> **Synthetic archive, random-weight backbone: not comparable")
    assert "Split: **test**" in markdown and "| **mean of 12** |" in markdown


# --------------------------------------------------------------------------- the docs


def test_docs_name_no_file_outside_the_repository():
    documents = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*")]
    for path in documents:
        text = path.read_text()
        assert "../shared" not in text and "PERFORMANCE.md" not in text and "DESIGN.md" not in text, path


def test_gitignore_covers_what_the_readme_and_demo_write():
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "cxrdask-demo/features.zarr",
                              "cxrdask-demo/archive/x.png", "quickstart-output/head/head.pt"],
                             cwd=ROOT, capture_output=True, text=True)
    assert len(ignored.stdout.split()) == 3, ignored.stdout + ignored.stderr
