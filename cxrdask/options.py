"""What every options dataclass of the library can do: a copy with some fields replaced by
name, an unknown name being an error that lists the known ones. The library's functions
take a config object and, for convenience, its fields as keyword arguments
(``evaluate(store, head, bootstrap=200)``); both go through :meth:`Options.with_options`."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from cxrdask.errors import OptionError


class Options:
    """A mixin for frozen option dataclasses (``ExtractConfig``, ``EvaluateConfig``, ...)."""

    #: How an unknown option's error names this kind ("extraction", "evaluation", ...).
    OPTIONS_NAME = "option"

    @classmethod
    def with_options(cls, base: Any = None, **options: Any) -> Any:
        """``base`` (or the defaults) with ``options`` replaced; an unknown name is an error."""
        known = [item.name for item in fields(cls)]  # type: ignore[arg-type]
        unknown = set(options) - set(known)
        if unknown:
            raise OptionError(f"unknown {cls.OPTIONS_NAME} option(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(known)}")
        return replace(base or cls(), **options)  # type: ignore[type-var]


__all__ = ["Options"]
