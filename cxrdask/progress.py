"""What the user sees while work runs: progress bars that suit where they are shown (widgets
in a notebook that has them, text elsewhere), and the library's messages.

``tqdm.auto`` picks the notebook bar whenever it runs in a kernel and warns ("IProgress not
found") when ipywidgets is missing; here the widget bar is used only when it can work, and
the text bar otherwise, with no warning.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Any


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_bar(*args: Any, **kwargs: Any):
    """A ``tqdm`` bar: the widget bar in a notebook with ipywidgets, the text bar otherwise."""
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(*args, **kwargs)


def show_messages(level: int | str = "INFO", stream: Any = None) -> logging.Handler:
    """Show the library's messages (the ``cxrdask`` logger: the Dask dashboard's link, ...)
    as plain lines on ``stream`` (default: stdout), as the command line does. The library
    itself never prints; returns the handler, to remove it again."""
    logger = logging.getLogger("cxrdask")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
