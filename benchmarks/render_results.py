"""Render the benchmark tables of README.md and docs/ (and the summary plot) from committed JSON.

Convention: ``benchmarks/results/published/`` is committed (un-ignored in .gitignore) and holds
the result JSON that published numbers come from; ``<name>.json`` there feeds the blocks named
``<name>``. Everything else under ``benchmarks/results/`` (models/, revisions/, quant_*.json...)
is the scripts' scratch output: git-ignored, never rendered from. To publish a run::

    cp benchmarks/results/models/all.json benchmarks/results/published/models.json
    .venv/bin/python benchmarks/render_results.py        # then commit JSON, docs and plot together

Markers stand alone on their lines in README.md or docs/**/*.md; the text between them is
generated (hand edits are overwritten, and ``--check`` reports them)::

    <!-- results:models -->
    <!-- /results:models -->

Usage: ``render_results.py`` rewrites the blocks and draws the plots; ``--check`` writes nothing
and exits 1 listing each block that differs (with a short diff); ``--root DIR``, ``--no-plots``.
Exit 2 on an error: missing JSON, unknown renderer, unbalanced markers, unexpected schema.

The output depends on the JSON alone (no render time, no machine state), so the check is
stable. Plots need matplotlib and are never compared (PNG bytes differ between matplotlib
versions). A new table: a ``@renderer("name")`` function taking the loaded JSON and returning
markdown; a new plot: ``@plotter("name", "docs/img/x.png")``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphopt.bench.report import BackendResult, BenchmarkReport, LatencyStats

PUBLISHED_DIR = "benchmarks/results/published"
DOCUMENT_GLOBS = ("README.md", "docs/**/*.md")

_OPEN = re.compile(r"<!-- results:(?P<name>[\w.-]+) -->")
_CLOSE = re.compile(r"<!-- /results:(?P<name>[\w.-]+) -->")
_DIFF_LINES = 40  # enough to see which numbers moved without flooding CI logs


class ResultsError(Exception):
    """Base of the errors below; the command line prints them and exits 2."""


class MarkerError(ResultsError):
    """Unbalanced, nested or duplicated ``<!-- results:NAME -->`` markers."""


class UnknownRendererError(ResultsError):
    """A marker names a block no renderer produces."""


class MissingResultsError(ResultsError):
    """A block's JSON file is not in the published folder."""


class ResultsFormatError(ResultsError):
    """A JSON file is unreadable or not in the schema its renderer expects."""


# ------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class Renderer:
    name: str
    source: str  # file name under PUBLISHED_DIR
    render: Callable[[Any], str]


@dataclass(frozen=True)
class Plotter:
    name: str
    source: str
    path: str  # relative to the repository root
    draw: Callable[[Any, Path], None]


RENDERERS: dict[str, Renderer] = {}
PLOTTERS: dict[str, Plotter] = {}


def renderer(name: str, source: str | None = None):
    """Register ``fn(loaded_json) -> markdown`` for blocks ``name`` (JSON ``<name>.json``)."""
    def register(fn: Callable[[Any], str]) -> Callable[[Any], str]:
        RENDERERS[name] = Renderer(name, source or f"{name}.json", fn)
        return fn
    return register


def plotter(name: str, path: str, source: str | None = None):
    """Register ``fn(loaded_json, out_path)`` drawing ``path`` from ``<name>.json``."""
    def register(fn: Callable[[Any, Path], None]) -> Callable[[Any, Path], None]:
        PLOTTERS[name] = Plotter(name, source or f"{name}.json", path, fn)
        return fn
    return register


# ------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Block:
    path: str  # relative to the root, POSIX separators
    name: str
    open_line: int  # 0-based index of the opening marker's line
    close_line: int


def find_blocks(text: str, path: str) -> list[Block]:
    """The marked blocks of one document; markers must stand alone on their line."""
    blocks: list[Block] = []
    current: tuple[str, int] | None = None
    for index, line in enumerate(text.splitlines()):
        opened, closed = _OPEN.fullmatch(line.strip()), _CLOSE.fullmatch(line.strip())
        where = f"{path}:{index + 1}"
        if opened and current is not None:
            raise MarkerError(f"{where}: block '{opened['name']}' opens inside block "
                              f"'{current[0]}' (opened on line {current[1] + 1})")
        if opened:
            current = (opened["name"], index)
        elif closed and (current is None or closed["name"] != current[0]):
            expected = f"'{current[0]}' is open" if current else "no block is open"
            raise MarkerError(f"{where}: closing marker for '{closed['name']}' but {expected}")
        elif closed:
            if any(b.name == current[0] for b in blocks):
                raise MarkerError(f"{where}: block '{current[0]}' appears twice in {path}")
            blocks.append(Block(path, current[0], current[1], index))
            current = None
    if current is not None:
        raise MarkerError(f"{path}:{current[1] + 1}: block '{current[0]}' is never closed "
                          f"(expected <!-- /results:{current[0]} -->)")
    return blocks


def documents(root: Path) -> list[Path]:
    """README.md and docs/**/*.md under ``root``, sorted so the output order is stable."""
    found = {p for pattern in DOCUMENT_GLOBS for p in root.glob(pattern) if p.is_file()}
    return sorted(found)


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def load_source(root: Path, source: str, needed_by: str) -> Any:
    """The parsed JSON ``PUBLISHED_DIR/source``; errors name the file and who needs it."""
    path = root / PUBLISHED_DIR / source
    if not path.is_file():
        raise MissingResultsError(
            f"{needed_by} needs {PUBLISHED_DIR}/{source}, which does not exist (publish a run: "
            f"copy its JSON there, see benchmarks/render_results.py)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsFormatError(f"{PUBLISHED_DIR}/{source}: cannot read JSON: {exc}") from exc


def _render_block(root: Path, block: Block, cache: dict[str, Any]) -> str:
    where = f"{block.path}:{block.open_line + 1}: block '{block.name}'"
    spec = RENDERERS.get(block.name)
    if spec is None:
        raise UnknownRendererError(f"{where} has no renderer; known: "
                                   f"{', '.join(sorted(RENDERERS)) or 'none'}")
    if spec.source not in cache:
        cache[spec.source] = load_source(root, spec.source, where)
    with _schema_errors(f"{where}: {PUBLISHED_DIR}/{spec.source}"):
        return spec.render(cache[spec.source]).strip("\n")


@contextlib.contextmanager
def _schema_errors(what: str):
    """Turn a renderer tripping over unexpected JSON into one error that names the file."""
    try:
        yield
    except ResultsFormatError as exc:
        raise ResultsFormatError(f"{what}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResultsFormatError(f"{what} is not in the expected schema: "
                                 f"{type(exc).__name__}: {exc}") from exc


def _scan(root: Path) -> list[tuple[Path, str, list[Block]]]:
    found = []
    for path in documents(root):
        text = path.read_text(encoding="utf-8")
        found.append((path, text, find_blocks(text, _relative(root, path))))
    return found


def render_blocks(root: str | Path) -> dict[tuple[str, str], str]:
    """``{(document path relative to root, block name): markdown}`` for every marked block."""
    root, cache = Path(root), {}
    return {(b.path, b.name): _render_block(root, b, cache)
            for _, _, blocks in _scan(root) for b in blocks}


def _block_body(markdown: str) -> list[str]:
    # blank lines around the generated text keep it a markdown block of its own
    return ["\n"] + [line + "\n" for line in markdown.split("\n")] + ["\n"]


def _rewritten(text: str, blocks: list[Block], rendered: dict[tuple[str, str], str]) -> str:
    lines = text.splitlines(keepends=True)
    for block in sorted(blocks, key=lambda b: b.open_line, reverse=True):
        body = _block_body(rendered[(block.path, block.name)])
        lines[block.open_line + 1:block.close_line] = body
    return "".join(lines)


def _block_diff(old: list[str], new: list[str], block: Block) -> str:
    label = f"{block.path} [{block.name}]"
    diff = list(difflib.unified_diff(old, new, f"{label} (in the file)",
                                     f"{label} (rendered from JSON)", n=1))
    shown = "".join(line if line.endswith("\n") else line + "\n" for line in diff[:_DIFF_LINES])
    more = len(diff) - _DIFF_LINES
    return shown + (f"... {more} more diff lines\n" if more > 0 else "")


def check(root: str | Path) -> list[str]:
    """One message (with a short unified diff) per block that differs from its rendering."""
    root, cache, problems = Path(root), {}, []
    for _, text, blocks in _scan(root):
        lines = text.splitlines(keepends=True)
        for block in blocks:
            old = lines[block.open_line + 1:block.close_line]
            new = _block_body(_render_block(root, block, cache))
            if old != new:
                problems.append(f"{block.path}: block '{block.name}' differs from "
                                f"{PUBLISHED_DIR}/{RENDERERS[block.name].source}\n"
                                + _block_diff(old, new, block))
    return problems


def write(root: str | Path) -> list[str]:
    """Rewrite every block in place; returns the documents that changed."""
    root, cache, updates = Path(root), {}, []
    for path, text, blocks in _scan(root):
        rendered = {(b.path, b.name): _render_block(root, b, cache) for b in blocks}
        new = _rewritten(text, blocks, rendered)
        if new != text:
            updates.append((path, new))
    # everything rendered before anything is written: an error leaves every file untouched
    for path, new in updates:
        path.write_text(new, encoding="utf-8")
    return [_relative(root, path) for path, _ in updates]


def render_plots(root: str | Path) -> list[str]:
    """Draw every registered plot whose JSON is published; returns the paths written."""
    root, written = Path(root), []
    for spec in PLOTTERS.values():
        if not (root / PUBLISHED_DIR / spec.source).is_file():
            continue  # nothing published yet: keep whatever figure is committed
        data = load_source(root, spec.source, f"plot {spec.path}")
        with _schema_errors(f"plot {spec.path}: {PUBLISHED_DIR}/{spec.source}"):
            spec.draw(data, root / spec.path)
        written.append(spec.path)
    return written


# ------------------------------------------------------------------------------ reports
def report_from_dict(data: dict[str, Any]) -> BenchmarkReport:
    """A :class:`BenchmarkReport` from its ``to_dict()`` form, less per-pass data; keys the
    dataclasses do not know are skipped so that JSON from a newer harness still loads."""
    result_fields = {f.name for f in dataclasses.fields(BackendResult)} - {"latency"}
    latency_fields = {f.name for f in dataclasses.fields(LatencyStats)}
    results = []
    for raw in data.get("results", []):
        kwargs = {k: v for k, v in raw.items() if k in result_fields}
        if raw.get("latency_ms"):
            kwargs["latency"] = LatencyStats(**{k: v for k, v in raw["latency_ms"].items()
                                                if k in latency_fields})
        results.append(BackendResult(**kwargs))
    return BenchmarkReport(model=dict(data.get("model", {})), config=dict(data.get("config", {})),
                           machine=dict(data.get("machine", {})), results=results,
                           created=data.get("created", ""),
                           duration_s=data.get("duration_s") or 0.0)


# ------------------------------------------------------------------------------ tables
def load_tables() -> None:
    """Register the renderers and plotters of the sibling ``results_*.py`` files (one family
    of tables per file: results_models.py, results_quant.py...)."""
    # Run as a script this module is __main__: the table files import it by name, and must get
    # this very module (its registries), not a second copy.
    sys.modules.setdefault("render_results", sys.modules[__name__])
    for path in sorted(Path(__file__).resolve().parent.glob("results_*.py")):
        if path.stem in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)


load_tables()


# ------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a block differs from its rendering")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]),
                        help="repository root (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="leave the figures alone")
    opts = parser.parse_args(argv)
    root = Path(opts.root)
    try:
        if opts.check:
            problems = check(root)
            for problem in problems:
                print(problem, file=sys.stderr)
            print(f"{len(problems)} block(s) out of date" if problems
                  else "all result blocks match their JSON")
            return 1 if problems else 0
        changed = write(root)
        print(f"rewrote {', '.join(changed)}" if changed else "all result blocks up to date")
        if not opts.no_plots and importlib.util.find_spec("matplotlib") is not None:
            for path in render_plots(root):
                print(f"drew {path}")
        elif not opts.no_plots:
            print("matplotlib is not importable: plots not drawn", file=sys.stderr)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
