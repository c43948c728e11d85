"""Generate ``docs/cli.md`` from the commands' own ``--help``, so it never drifts.

    python scripts/docs_gen.py          # rewrites docs/cli.md; a test checks it matches

The Python API reference is rendered from the docstrings by mkdocstrings (``mkdocs build``,
``docs/reference.md``); this script only captures what ``cxrdask --help`` and
``cxrdask COMMAND --help`` print, through argparse's public interface.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from cxrdask.cli import COMMANDS, build_parser

WIDTH = "100"  # argparse wraps to $COLUMNS; fixed so the file is the same everywhere


def help_text(*words: str) -> str:
    """What ``cxrdask WORDS --help`` prints."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        build_parser(only=words[0] if words else None).parse_args([*words, "--help"])
    return output.getvalue().rstrip()


def markdown_reference() -> str:
    """The whole CLI reference as Markdown: the top-level help, then each command's."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = ["# Command line reference", "",
                 "Generated from the commands' own `--help` by `python scripts/docs_gen.py`; "
                 "a test checks it matches.", "", "```text", help_text(), "```"]
        for name, summary in COMMANDS.items():
            parts += ["", f"## `cxrdask {name}`", "", summary[:1].upper() + summary[1:] + ".", "",
                      "```text", help_text(name), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def main(root: str | os.PathLike = Path(__file__).resolve().parent.parent) -> None:
    target = Path(root) / "docs" / "cli.md"
    target.write_text(markdown_reference())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
