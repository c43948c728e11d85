"""``python -m cxrdask.cli COMMAND ...``: the ``cxrdask`` command."""

from cxrdask.cli.main import run

run()
