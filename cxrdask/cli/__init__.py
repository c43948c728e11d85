"""The ``cxrdask`` command: info, verify, synth, demo, extract, cache, train, evaluate, predict,
serve (``cxrdask COMMAND --help``; docs/cli.md holds every command's help).

:mod:`~cxrdask.cli.main` builds the parser and runs a command, :mod:`~cxrdask.cli.commands`
holds what each does, :mod:`~cxrdask.cli.options` the option generator and the options
commands share, :mod:`~cxrdask.cli.exit_codes` the exit statuses. Defaults shown by
``--help`` are the Python API's own.
"""

from cxrdask.cli.exit_codes import exit_codes_text
from cxrdask.cli.main import COMMANDS, build_parser, main, run
from cxrdask.cli.options import parse_storage_options

__doc__ = f"{__doc__}\n{exit_codes_text()}\n"

__all__ = ["COMMANDS", "build_parser", "main", "parse_storage_options", "run"]
