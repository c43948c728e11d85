"""Regenerate the README's AUC chart from a fresh ``cxrdask demo`` run with its default settings.

    python scripts/readme_figures.py            # writes docs/img/auc_bars.png

The chart in the README is then the one the demo draws today, caveat line included, never
an image edited by hand.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cxrdask.demo import run_demo  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as workdir:
        result = run_demo(Path(workdir) / "demo", progress=False, echo=lambda line: None)
        target = ROOT / "docs" / "img" / "auc_bars.png"
        shutil.copyfile(result.report_dir / "auc_bars.png", target)
    print(f"wrote {target.relative_to(ROOT)} (demo mean test AUC {result.mean_auc:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
