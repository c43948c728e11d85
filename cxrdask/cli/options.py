"""The ``cxrdask`` command's options: one generator turns a config dataclass's fields into
options (:func:`add_options`, :func:`options_from_args`), and the options several commands
share are defined once here, meaning the same thing in each.

A field declared with :func:`cxrdask.options.option` becomes ``--field-name`` (or its own
flag), typed by its annotation: a ``Literal`` gives its choices, ``bool`` a switch, a named
parser (``type="backbone"``) its own check; the field's default is the option's default and
its help the option's help. Nothing is written twice.
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import MISSING as NO_DEFAULT
from typing import Any, Literal

from cxrdask.choices import Device, values_of
from cxrdask.errors import OptionError
from cxrdask.options import Options, field_types

DefaultsFrom = Literal["field", "preset"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (where it has one the help does not already state)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.nargs == 0  # flags: their help says what they do
                or action.default == argparse.SUPPRESS or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


# --------------------------------------------------------------------------- the generator


def _chunk_rows(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of rows or 'auto', not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a positive number of rows, not {value}")
    return value


_SWITCH = {"yes": True, "true": True, "on": True, "1": True,
           "no": False, "false": False, "off": False, "0": False}


def _compile(text: str) -> bool | str:
    if text == "auto":
        return text
    if text.lower() not in _SWITCH:
        raise argparse.ArgumentTypeError(f"auto, yes or no, not {text!r}")
    return _SWITCH[text.lower()]


def _backbone(text: str) -> str:
    from cxrdask.backbones.spec import BackboneSpec

    try:
        BackboneSpec(name=text, weights="random")
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _views(text: str) -> str | tuple[str, ...]:
    """``frontal``, ``all``, or a comma-separated list of view families or views."""
    from cxrdask.archive.views import check_views

    chosen = text if text in ("frontal", "all") else tuple(v for v in text.split(",") if v)
    try:
        return check_views(chosen)
    except OptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


PARSERS = {"chunk_rows": _chunk_rows, "compile": _compile, "backbone": _backbone, "views": _views}


def _plain_type(kind: Any) -> Any:
    """The callable that parses a field's text: ``int`` for ``int | None``, and so on."""
    import types
    import typing

    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(kind) if m is not type(None)]
        return members[0] if len(members) == 1 else str
    return kind if kind in (int, float, str) else str


def add_options(parser: argparse.ArgumentParser | Any, cls: type[Options], *,
                only: tuple[str, ...] | None = None,
                defaults: DefaultsFrom = "field") -> None:
    """One option per command-line field of ``cls`` (or of those named in ``only``): its
    flag, type or choices, default and help. ``defaults="preset"``: every option but
    ``preset`` defaults to None, the preset's value (the help says so)."""
    hints = field_types(cls)
    plain = cls()
    for item in cls.command_line_fields():
        if only is not None and item.name not in only:
            continue
        cli = dict(item.metadata.get("cli", {}))
        flag = cli.pop("flag", "--" + item.name.replace("_", "-"))
        default = item.default if item.default is not NO_DEFAULT else None
        text = item.metadata["help"]
        if defaults == "preset" and item.name != "preset":
            if hints[item.name] is not bool:  # a switch's help says what it does
                text += f" (default: the preset's; default preset: {getattr(plain, item.name)})"
            default = None
        options: dict[str, Any] = {"dest": item.name, "default": default, "help": text}
        kind = hints[item.name]
        if kind is bool:
            options["action"] = cli.pop("action", "store_true")
        elif "type" in cli:
            options["type"] = PARSERS[cli.pop("type")]
        elif values_of(kind):
            options["choices"] = list(values_of(kind))
        else:
            options["type"] = _plain_type(kind)
        parser.add_argument(flag, **options, **cli)  # what is left: nargs, const, metavar


def options_from_args(args: argparse.Namespace, cls: type[Options], *,
                      only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The fields the parsed options of :func:`add_options` give (None where left to a preset)."""
    return {item.name: getattr(args, item.name) for item in cls.command_line_fields()
            if only is None or item.name in only}


# --------------------------------------------------------------------------- shared options


def parse_storage_options(pairs: list[str] | None) -> dict | None:
    """``key=value`` pairs; a value that parses as JSON is taken as JSON, else as a string."""
    if not pairs:
        return None
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--storage-option wants key=value, not {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec storage option for every URL (repeatable; JSON values parse)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_device(parser: argparse.ArgumentParser, where: str, default: str = "auto") -> None:
    """``--device``: the same choices in every command (``auto``: the GPU where there is one);
    ``where`` says what runs there."""
    parser.add_argument("--device", choices=list(values_of(Device)), default=default,
                        help=f"{where} (auto: the GPU where there is one)")


def add_cluster(parser: argparse.ArgumentParser, what: str, *, layout: bool = True,
                workers: bool = True) -> None:
    """Where a command's Dask work runs: a running scheduler, or a local cluster of
    ``--workers`` processes (the same meaning in every command; ``workers=False`` where the
    command's config generates it)."""
    parser.add_argument("--scheduler", help=f"address of a running Dask scheduler for {what} "
                                            "(tcp://host:port; default: a local cluster)")
    if workers:
        parser.add_argument("--workers", type=int,
                            help="local Dask worker processes (default: one per core"
                                 + ("; one in all, with a thread per core, where the backbone runs "
                                    "on the CPU on ONNX Runtime, OpenVINO or in bf16 on eager "
                                    "PyTorch)" if layout else ")"))
    if layout:
        parser.add_argument("--threads-per-worker", type=int, default=1,
                            help="threads per local worker process")
        parser.add_argument("--dashboard-address",
                            default=source_default("runtime.cluster", "start_local_cluster",
                                                   "dashboard_address"),
                            help="where the local cluster's dashboard listens (a busy port is "
                                 "replaced by a free one); 0.0.0.0:8787 shows it to other machines")
    parser.add_argument("--performance-report", metavar="FILE.html",
                        help=f"write Dask's performance report of {what} to this file")


def add_model(parser: argparse.ArgumentParser) -> None:
    """A trained head and the backbone it needs, for the commands that diagnose images."""
    parser.add_argument("--checkpoint", required=True, help="head checkpoint (head.pt)")
    parser.add_argument("--weights", help="backbone weights file, when the head was trained on one")
    add_device(parser, "where the backbone and head run")


def api_default(function, name: str):
    """The default of parameter ``name`` of an API function: the CLI states no default twice."""
    return inspect.signature(function).parameters[name].default


def source_default(module: str, function: str, name: str):
    """:func:`api_default` read from the module's source, for API modules that import torch,
    pandas or distributed: each command's ``--help`` answers in well under a second."""
    from cxrdask.source_defaults import source_default as read

    return read(f"cxrdask.{module}", function, name)


__all__ = ["PARSERS", "DefaultsFrom", "HelpFormatter", "add_cluster", "add_device", "add_model",
           "add_options", "add_quiet", "add_storage", "api_default", "options_from_args",
           "parse_storage_options", "source_default"]
