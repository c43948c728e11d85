"""Print one of the README's two first-screen commands, exactly as written there.

``.ci/run`` runs them through this script, so CI runs what a newcomer copies, not a
variant of it::

    python3 scripts/readme_commands.py demo    # the synthetic end-to-end run
    python3 scripts/readme_commands.py tests   # install with the test extra, run the tests

Each is the body of a ``bash`` block marked ``<!-- not-run: ci-runs-it -->`` (the docs
test leaves those blocks to CI): the first such block is the demo, the second the tests.
Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKED = re.compile(r"<!-- not-run: ci-runs-it -->\n```bash\n(?P<body>.*?)```", re.S)
NAMES = ("demo", "tests")


def readme_commands(text: str) -> dict[str, str]:
    """The README's marked commands by name; exactly two, each one line."""
    bodies = [m["body"].strip() for m in MARKED.finditer(text)]
    if len(bodies) != len(NAMES) or any("\n" in body for body in bodies):
        raise SystemExit(f"{README}: expected {len(NAMES)} one-line bash blocks marked "
                         f"'<!-- not-run: ci-runs-it -->', found {len(bodies)}")
    return dict(zip(NAMES, bodies, strict=True))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in NAMES:
        print(f"usage: python3 {Path(__file__).name} {{{','.join(NAMES)}}}", file=sys.stderr)
        return 2
    print(readme_commands(README.read_text())[argv[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
