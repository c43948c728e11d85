"""Progress bars that suit where they are shown: widgets in a notebook that has them, text elsewhere.

``tqdm.auto`` picks the notebook bar whenever it runs in a kernel and warns ("IProgress not
found") when ipywidgets is missing; here the widget bar is used only when it can work, and
the text bar otherwise, with no warning.
"""

from __future__ import annotations

import importlib.util
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
