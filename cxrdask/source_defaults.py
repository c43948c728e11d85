"""Read an API function's parameter default from its module's source, without importing it.

The command line shows the Python API's own defaults (they are stated once, in the API's
signatures), but importing ``cxrdask.evaluation.report`` or ``cxrdask.head.train`` to read them brings
in torch and scikit-learn: ``cxrdask evaluate --help`` took 3.6 s. Parsing the module's
source takes milliseconds. A default must be a literal, or the name of a module-level
constant (of that module) that is one; anything else raises, so a default the reader cannot
see is caught by the help test rather than shown wrong. ``tests/test_first_hour.py`` checks
every default the CLI reads this way against :func:`inspect.signature` on the imported API.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any


@functools.cache
def _module_tree(module: str) -> ast.Module:
    """The parsed source of ``module``, found from its top-level package alone: finding
    ``cxrdask.archive.synthetic.writer`` with importlib would import ``cxrdask.archive.synthetic`` first."""
    top, *parts = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise LookupError(f"no source for module {module}")
    base = Path(spec.origin).parent.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return ast.parse(path.read_text(encoding="utf-8"))
    raise LookupError(f"no source for module {module} (looked for {base}.py)")


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level ``NAME = value`` and ``NAME: type = value`` assignments."""
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            found[node.target.id] = node.value
    return found


def _defaults(function: ast.FunctionDef) -> dict[str, ast.expr]:
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    named = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]],
                     args.defaults, strict=True))
    named.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                  if d is not None})
    return named


def _field_defaults(cls: ast.ClassDef) -> dict[str, ast.expr]:
    """A dataclass's field defaults: its class-level ``name: type = value`` lines."""
    return {node.target.id: node.value for node in cls.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and node.value is not None}


def source_default(module: str, function: str, name: str) -> Any:
    """The default of parameter ``name`` of the top-level function ``function`` of
    ``module`` (``"cxrdask.evaluation.report"``), or of field ``name`` of the dataclass
    ``function`` names there (``"EvaluateConfig"``), read from the source.

    Raises
    ------
    LookupError
        No such function or parameter default, or a default that is not a literal.
    """
    tree = _module_tree(module)
    # The last definition of that name: typing.overload stubs come before it, with ``...``.
    definition = next((node for node in reversed(tree.body)
                       if isinstance(node, ast.FunctionDef | ast.ClassDef)
                       and node.name == function), None)
    if definition is None:
        raise LookupError(f"no function or class {function} in {module}")
    node = (_field_defaults(definition) if isinstance(definition, ast.ClassDef)
            else _defaults(definition)).get(name)
    if node is None:
        raise LookupError(f"{module}.{function} has no default for {name}")
    if isinstance(node, ast.Name):
        node = _constants(tree).get(node.id, node)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise LookupError(f"the default of {name} in {module}.{function} is not a literal: "
                          f"{ast.unparse(node)}") from None


__all__ = ["source_default"]
