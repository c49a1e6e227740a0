"""Helpers shared by the CLI subcommands: errors, MODEL loading, pipeline checks, output."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from graphopt.errors import GraphoptError


class CliError(GraphoptError):
    """A user error the CLI reports in one line; ``code`` is the exit status (2: bad input)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def check_pipeline(text: str | None) -> Any:
    """Parse pipeline text early (before loading a model) so that typos fail fast."""
    if text is None:
        return None
    from graphopt.transform.pipeline import parse_pipeline

    parse_pipeline(text)  # raises UnknownPassError / PipelineError with a clear message
    return text


def load(spec: str, *, need_graph: bool = True, quiet: bool = False):
    """Resolve MODEL; with ``need_graph`` also trace/import it (timed on stderr)."""
    from graphopt.model_loader import load_model

    start = time.perf_counter()
    loaded = load_model(spec)
    if need_graph:
        loaded.graph()
        if not quiet:
            info(f"loaded {spec}: {len(loaded.graph().nodes)} nodes "
                 f"({time.perf_counter() - start:.1f} s)")
    return loaded


def optimize_with_report(graph, pipeline: str):
    import graphopt

    optimize = getattr(graphopt, "optimize", None)
    if optimize is None:
        raise CliError("optimization passes are not part of this build", code=1)
    return optimize(graph, pipeline, report=True)


def paragraph(text: str, width: int = 88) -> str:
    """``text`` wrapped for a RawDescriptionHelpFormatter description."""
    import textwrap

    return textwrap.fill(" ".join(text.split()), width)


def info(text: str) -> None:
    """Progress/status lines go to stderr so that stdout stays the command's result."""
    sys.stdout.flush()  # keep the order when both go to one terminal
    print(text, file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def ensure_parent(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"cannot write {path}: folder {folder} does not exist")
