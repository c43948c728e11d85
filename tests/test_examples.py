"""The examples and docs a newcomer follows: the quickstart notebook, the CLI reference."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_quickstart_notebook_runs_top_to_bottom(tmp_path):
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is saved without outputs"
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = (f"N_IMAGES = 90\nSIZE = 128\nEPOCHS = 3\nWORKERS = 2\n"
                            f"WORKDIR = {str(tmp_path / 'out')!r}")
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    stderr = "\n".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    for noise in ("IProgress not found", "still alive", "already in use", "Traceback"):
        assert noise not in stderr, f"{noise!r} in the notebook's output:\n{stderr}"
    assert "pip install -e '.[notebook]'" in notebook.cells[0].source
    assert "dashboard: http://127.0.0.1:" in text
    assert "rows: 90 written" in text or "written, 0 failed" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # curves, AUC bars, ROC
    assert (tmp_path / "out" / "head" / "head.pt").exists()


def test_cli_reference_matches_the_commands_help():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from docs_gen import markdown_reference
    finally:
        sys.path.pop(0)
    written = (ROOT / "docs" / "cli.md").read_text()
    assert written == markdown_reference(), "docs/cli.md is stale: run python scripts/docs_gen.py"


# --------------------------------------------------------------------------- docs snippets

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")),
             "examples/real_nih.md"]
# Why a block may be left out; anything else must run.
NOT_RUN_REASONS = {
    "real-archive": "needs the real 45 GB NIH archive",
    "weights": "downloads published weights (the machines that build the docs cannot)",
    "gpu": "needs a CUDA GPU",
    "cluster": "needs a Slurm/Kubernetes/Coiled cluster",
    "install": "installs the project into the reader's environment",
    "ci-runs-it": "the README's two commands: .ci/run runs them exactly as written",
    "server": "starts a server that runs until stopped (tests/test_web.py starts it)",
    "benchmark": "a benchmark run of minutes; its table is recorded beside it",
    "illustration": "a folder layout, not a command",
    "run-by-test": "run exactly as written by a test with stronger checks (tests/test_first_run.py)",
}
FENCE = re.compile(r"(?:<!-- not-run: (?P<reason>[\w-]+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
                   re.S)


def snippets(document: str) -> list[tuple[str, str | None, str]]:
    """``(language, not-run reason or None, code)`` of each fenced block, in order."""
    text = (ROOT / document).read_text()
    return [(m["lang"], m["reason"], m["body"]) for m in FENCE.finditer(text)]


def test_every_snippet_is_runnable_or_says_why_not():
    for document in DOCUMENTS:
        for lang, reason, _ in snippets(document):
            if reason is not None:
                assert reason in NOT_RUN_REASONS, f"{document}: unknown not-run reason {reason!r}"
            else:
                assert lang in ("bash", "python", "text"), f"{document}: a ``` block without a language"


def runnable(document: str) -> list[tuple[str, str]]:
    return [(lang, body) for lang, reason, body in snippets(document)
            if reason is None and lang in ("bash", "python")]


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if runnable(d)])
def test_document_snippets_run(document, tmp_path):
    """Each document's runnable blocks, exactly as written and in order, in one fresh folder:
    every Python block saved as its own file and run with ``python FILE`` (as a reader who
    copies it would), every shell block run by bash with this environment's ``cxrdask`` and
    ``python`` first on the PATH. Later blocks may read files that earlier ones wrote."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    for number, (lang, body) in enumerate(runnable(document)):
        if lang == "bash":
            command = ["bash", "-euo", "pipefail", "-c", body]
        else:
            script = tmp_path / f"snippet_{number}.py"
            script.write_text(body)
            command = [sys.executable, str(script)]
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, f"{document}:\n{body}\n--- output:\n{run.stdout}\n{run.stderr}"
        assert "Traceback" not in run.stderr, f"{document}:\n{body}\n--- stderr:\n{run.stderr}"


@pytest.mark.parametrize(("script", "args", "expected"), [
    ("compare_workers.py", ["--n", "8", "--size", "128", "--layouts", "2x1"], "fastest here:"),
    ("s3_pipeline.py", ["--n", "40"], "checkpoint and report in"),
])
def test_example_scripts_run(script, args, expected, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert expected in run.stdout
