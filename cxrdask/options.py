"""What every options dataclass of the library can do, and how its fields are declared.

The library's functions take a config object and, for convenience, its fields as keyword
arguments (``evaluate(store, head, bootstrap=200)``); both go through
:meth:`Options.with_options`, where an unknown name is an error that lists the known ones.
A field declared with :func:`option` carries its help text (and, where the flag differs,
how the command line spells it): ``cxrdask.cli`` generates every command's options from
these fields, so a default or a help text is written once, beside the field.
"""

from __future__ import annotations

import functools
import typing
import warnings
from collections.abc import Callable
from dataclasses import Field, field, fields, replace
from typing import Any, TypeVar

from cxrdask.choices import values_of
from cxrdask.errors import OptionError

F = TypeVar("F", bound=Callable[..., Any])


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with its command-line help; ``cli`` says how the flag differs from
    ``--field-name`` (``flag=``, ``action=``, ``type=``, ``nargs=``, ``const=``, ``metavar=``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("option() takes immutable defaults (a tuple, not a list)")
    return field(default=default, metadata={"help": help, "cli": cli})


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

    @classmethod
    def command_line_fields(cls) -> list[Field]:
        """The fields declared with :func:`option`: those the command line offers."""
        return [item for item in fields(cls) if "help" in item.metadata]  # type: ignore[arg-type]

    def check_choices(self) -> None:
        """Refuse a field typed with a ``Literal`` (alone or in a union, ``int |
        Literal["auto"]``) whose value is none of its choices, naming the field and them."""
        hints = field_types(type(self))
        for item in fields(self):  # type: ignore[arg-type]
            kind = hints[item.name]
            value = getattr(self, item.name)
            allowed = values_of(kind)
            members = [typing.get_origin(m) or m for m in typing.get_args(kind) or (kind,)]
            plain = tuple(member for member in members if isinstance(member, type))
            if allowed and value not in allowed and not isinstance(value, plain):
                raise OptionError(f"{item.name} must be one of {', '.join(map(repr, allowed))}, "
                                  f"not {value!r}")


def renamed(function: str, old: str, new: str, old_value: Any, new_value: Any,
            unset: Any = None) -> Any:
    """The value of parameter ``new``, or of ``old``, its spelling before this release, with a
    ``DeprecationWarning`` (old spellings keep working for one release). Both given is an error."""
    if old_value is unset:
        return new_value
    if new_value is not unset:
        raise OptionError(f"{function}: give {new}= only ({old}= is its deprecated name)")
    warnings.warn(f"{function}({old}=...) is deprecated and goes in the next release: use {new}=",
                  DeprecationWarning, stacklevel=3)
    return old_value


def storage_options_by_keyword(position: int) -> Callable[[F], F]:
    """Make a function's ``storage_options`` keyword-only while a call that passes it at
    ``position`` (its place before this release, counting ``cls``) still works, for one
    release, with a ``DeprecationWarning``."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > position:
                if "storage_options" in kwargs:
                    raise TypeError(f"{function.__qualname__}() got storage_options twice")
                warnings.warn(f"{function.__qualname__}(): pass storage_options by keyword; by "
                              "position it goes in the next release", DeprecationWarning,
                              stacklevel=2)
                args, kwargs = args[:position], {**kwargs, "storage_options": args[position],
                                                 **_after(function, args[position + 1:])}
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _after(function: Callable, values: tuple) -> dict[str, Any]:
    """The keyword-only parameters after ``storage_options`` that an old positional call
    gave by position (``FeatureStore.open(url, options, "r+")``), by name."""
    import inspect

    names = [p.name for p in inspect.signature(function).parameters.values()
             if p.kind is p.KEYWORD_ONLY and p.name != "storage_options"]
    return dict(zip(names, values, strict=False))


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field of ``cls`` (its annotations are strings), cached."""
    if cls not in _FIELD_TYPES:
        _FIELD_TYPES[cls] = typing.get_type_hints(cls)
    return _FIELD_TYPES[cls]


__all__ = ["Options", "field_types", "option", "renamed", "storage_options_by_keyword"]
