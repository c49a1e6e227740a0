"""The layer contract (docs/architecture.md, ``[tool.importlinter]`` in pyproject.toml) holds.

``lint-imports`` checks the contracts on the static import graph of ``graphopt/`` and
``passes/``. Two things it cannot see are checked here directly: imports of ``graphopt.passes``
from inside ``graphopt/`` (the passes live in the top-level ``passes/`` directory, which grimp
analyses as the root package ``passes``, so such an edge would be invisible), and the IR's op
lookup working through its hook alone.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint_imports() -> str | None:
    """The lint-imports executable next to this interpreter, or on PATH; None if absent."""
    candidate = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    if os.path.exists(candidate):
        return candidate
    return shutil.which("lint-imports")


def test_import_contracts_are_kept():
    exe = _lint_imports()
    assert exe is not None, ("import-linter is not installed: it is in the [test] extra "
                             "(make venv installs it); lint-imports checks the layer contract")
    # From the repository root: it reads pyproject.toml there and finds passes/ through the
    # working directory. --no-cache: the shared checkout's cache may be stale or half-written.
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports found broken contracts:\n{report}"
    assert "0 broken" in report, report


def _static_imports(path: str) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, nested (lazy) ones included."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_no_module_of_graphopt_imports_the_pass_library():
    """The built-in passes sit above the libraries they wrap; graphopt/ reaches them only by
    name (transform registry: ``load_pass_library``, pipelines as text)."""
    offenders = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "graphopt")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            for line, module in _static_imports(path):
                if module == "graphopt.passes" or module.startswith("graphopt.passes."):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{line} imports {module}")
    assert not offenders, "graphopt/ must not import graphopt.passes:\n" + "\n".join(offenders)


def test_ir_finds_ops_through_its_hook_only():
    """A fresh interpreter: ``import graphopt.ir`` then parse and verify a graph. The op library
    is installed by importing graphopt.ops (the package __init__ does); the IR never imports it."""
    code = (
        "import graphopt.ir\n"
        "from graphopt.ir.parser import parse_graph\n"
        "g = parse_graph('graph main(%x: f32[2]) {\\n  %y: f32[2] = relu(%x)\\n  return %y\\n}')\n"
        "g.verify()\n"
        "print(next(iter(g.nodes)).opdef.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "relu"


def test_ir_without_an_op_library_says_what_to_do(monkeypatch):
    from graphopt.errors import UnknownOpError
    from graphopt.ir import schema

    monkeypatch.setattr(schema, "_get_op", None)
    monkeypatch.setattr(schema, "_all_ops", None)
    expected = r"op 'relu'.*no op library is installed.*graphopt\.ops"
    with pytest.raises(UnknownOpError, match=expected):
        schema.get_op("relu")
    assert schema.all_ops() == {}


MAX_FUNCTION_LINES = 60


def _function_lengths(path: str) -> list[tuple[int, str, int]]:
    """(line, name, length) of every function in a file, nested ones included. The length runs
    from the ``def`` line to the last line of the body, less the docstring: a long docstring is
    documentation, not code that is hard to follow."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    lengths = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        first = node.body[0]
        if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            length -= first.end_lineno - first.lineno + 1
        lengths.append((node.lineno, node.name, length))
    return lengths


def test_no_function_longer_than_60_lines():
    """Issue #16: a function that does not fit on a screen is split into named steps."""
    offenders = []
    for top in ("graphopt", "passes"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                for line, function, length in _function_lengths(path):
                    if length > MAX_FUNCTION_LINES:
                        offenders.append(
                            f"{os.path.relpath(path, ROOT)}:{line} {function} ({length} lines)")
    assert not offenders, (f"functions longer than {MAX_FUNCTION_LINES} lines (split them into "
                           "named helpers):\n" + "\n".join(sorted(offenders)))
