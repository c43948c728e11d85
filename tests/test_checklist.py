"""The reporting checklist: every TRIPOD+AI entry once, filled where the run knows it."""

from __future__ import annotations

import re

from cxrdask.evaluation.checklist import TRIPOD_AI
from cxrdask.evaluation.report import evaluate
from cxrdask.head.model import load_checkpoint


def _table(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in markdown.splitlines() if re.match(r"\| \d+[a-g]? \|", line)]


def test_the_checklist_lists_every_item_once_and_fills_what_the_run_has(trained_checkpoint,
                                                                       tmp_path):
    store = load_checkpoint(trained_checkpoint).provenance["stores"][0]["url"]
    report = evaluate(store, trained_checkpoint, bootstrap=20, out_dir=tmp_path / "report")
    rows = _table((tmp_path / "report" / "checklist.md").read_text())
    assert [row[0] for row in rows] == [item for item, _, _ in TRIPOD_AI]  # each once, in order
    assert len(rows) == 52 and len({row[0] for row in rows}) == 52
    by_item = {row[0]: row for row in rows}
    status = {item: row[3] for item, row in by_item.items()}
    # what the run knows is filled, with the run's own numbers
    assert status["23a"] == "filled" and f"mean AUC {report.mean_auc:.3f}" in by_item["23a"][4]
    assert status["20a"] == "filled" and f"{report.n_rows:,} scored" in by_item["20a"][4]
    assert status["7"] == "filled" and "resized to 224 px" in by_item["7"][4]
    assert status["16"] == "filled" and "internal" in by_item["16"][4]
    assert status["13"] == "filled" and "negatives/positives" in by_item["13"][4]
    # what only the author knows is marked as the author's, never made up
    for item in ("1", "2", "3a", "17", "18a", "18b", "19", "25", "26"):
        assert status[item] == "**author**", item
    assert {"filled", "in part", "**author**"} == set(status.values())
    assert str(tmp_path / "report" / "checklist.md") in report.files
    assert "BMJ 2024;385:e078378" in (tmp_path / "report" / "checklist.md").read_text()
