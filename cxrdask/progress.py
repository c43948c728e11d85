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
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from fsspec.callbacks import Callback


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _tqdm_class() -> type:
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


#: What a long call's ``progress`` takes: True (a tqdm bar: widgets in a notebook that has
#: them, text elsewhere), False (none), or an fsspec callback of the caller's own
#: (``fsspec.callbacks.Callback``: ``set_size`` is called with the total, then
#: ``relative_update`` as work lands), to drive any other display.
Progress = Union[bool, "Callback"]


def progress_callback(progress: Progress, total: int, **bar: Any) -> Callback:
    """The callback a long call reports to: the caller's own, sized to ``total``; a tqdm bar
    (``bar``: its ``desc``, ``unit``, ...); or one that does nothing."""
    from fsspec.callbacks import Callback, NoOpCallback, TqdmCallback

    if isinstance(progress, Callback):
        callback = progress
    elif progress:
        callback = TqdmCallback(tqdm_kwargs=bar, tqdm_cls=_tqdm_class())
    else:
        callback = NoOpCallback()
    callback.set_size(total)
    return callback


def show_values(callback: Callback, **values: Any) -> None:
    """Show ``values`` beside a tqdm bar (the loss of each epoch); other callbacks ignore them."""
    from fsspec.callbacks import TqdmCallback

    if isinstance(callback, TqdmCallback) and callback.tqdm is not None:
        callback.tqdm.set_postfix(**values)


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


__all__ = ["Progress", "progress_callback", "show_messages", "show_values"]
