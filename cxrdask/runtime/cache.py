"""Where cxrdask keeps what it can compute again but would rather not: ONNX exports,
OpenVINO's compiled models, the copies found between two stores.

The folder is ``$CXRDASK_CACHE_DIR`` when that variable is set, else
``$XDG_CACHE_HOME/cxrdask`` (``~/.cache/cxrdask``); each kind of entry has a folder of its
own under it. Removing it loses nothing but time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (see the module's docstring); not created here."""
    root = os.getenv("CXRDASK_CACHE_DIR")
    if not root:
        root = os.path.join(os.getenv("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "cxrdask")
    return Path(root)


__all__ = ["cache_root"]
