"""Pass pipelines: text syntax, the parsed form, and the named pipelines.

Syntax::

    pipeline := [item ("," item)*]
    item     := NAME ["{" option ("," option)* "}"]              a pass, or a named pipeline
              | "fixpoint" ["{max=N}"] "(" pipeline ")"          repeat until nothing changes
              | "repeat" "{n=N}" "(" pipeline ")"                run exactly N times
    option   := NAME "=" VALUE       VALUE: 0.5, 4, true, fast, "quoted, text", [0, 2, 1], none

Examples: ``"canonicalize,dce,cse"``, ``"fold-constants{max_growth=4}"``,
``"fixpoint{max=4}(canonicalize,cse,dce)"``, ``"default"``. Whitespace is ignored. ``fixpoint``
runs its body again while any pass in it reports a change, at most ``max`` times (default 10).
A NAME that is not a pass but a key of ``PIPELINES`` expands to that pipeline.

A pipeline may also be a Python list whose items are pipeline texts, pass instances, registered
pass functions/classes, or plain functions ``fn(graph) -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphopt.errors import PipelineError, UnknownPassError
from graphopt.transform.registry import (
    _PASSES,
    FunctionPass,
    PassInfo,
    get_pass_info,
    load_pass_library,
    pass_name,
    pass_text,
    unknown_pass_message,
)

# Named pipelines. "default" = every fp32-exact pass, cleanup to a fixpoint around the fusions.
# To add a fusion pass to the default pipeline, append its name to "fusions".
PIPELINES: dict[str, str] = {
    "cleanup": "fixpoint(canonicalize,fold-constants,cse,dce)",
    # Pattern fusions; cleanup folds the constants they create (transposed / folded weights,
    # constant masks) and removes what they leave dead before the next group looks.
    "fusions": (
        "fold-batchnorm,fuse-matmul-add,fuse-layernorm,fuse-gelu,cleanup,"
        "fuse-attention,cleanup,fold-transpose-matmul,fuse-activation"
    ),
    "default": "cleanup,fusions,cleanup",
}

DEFAULT_FIXPOINT_MAX = 10


@dataclass
class PassStep:
    """Run one pass instance."""

    pass_: Any

    @property
    def name(self) -> str:
        return pass_name(self.pass_)

    def text(self) -> str:
        return pass_text(self.pass_)


@dataclass
class Fixpoint:
    """Run ``body`` until an iteration changes nothing (at most ``max_iterations`` times)."""

    body: Pipeline
    max_iterations: int = DEFAULT_FIXPOINT_MAX

    def text(self) -> str:
        n = self.max_iterations
        opts = "" if n == DEFAULT_FIXPOINT_MAX else f"{{max={n}}}"
        return f"fixpoint{opts}({self.body})"


@dataclass
class Repeat:
    """Run ``body`` exactly ``times`` times."""

    body: Pipeline
    times: int

    def text(self) -> str:
        return f"repeat{{n={self.times}}}({self.body})"


Step = PassStep | Fixpoint | Repeat


@dataclass
class Pipeline:
    """A parsed pipeline: a list of steps. ``str(pipeline)`` is its canonical text."""

    steps: list[Step] = field(default_factory=list)

    def __str__(self) -> str:
        return ",".join(s.text() for s in self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def passes(self) -> Iterator[Any]:
        """Every pass instance, in order, bodies of repetitions included once."""
        for step in self.steps:
            if isinstance(step, PassStep):
                yield step.pass_
            else:
                yield from step.body.passes()

    def with_options(self, overrides: dict[str, dict[str, Any]]) -> Pipeline:
        """A copy where every instance of pass ``name`` gets ``overrides[name]`` options.

        Names may be kebab- or snake-case; unknown passes or options raise.
        """
        import dataclasses

        normalized = {}
        for name, opts in overrides.items():
            info = get_pass_info(name)
            if not isinstance(opts, dict):
                raise PipelineError(f"options for pass '{info.name}' must be a dict, got {opts!r}")
            normalized[info.name] = (info, opts)

        def rebuild(pipeline: Pipeline) -> Pipeline:
            steps: list[Step] = []
            for step in pipeline.steps:
                if isinstance(step, PassStep) and step.name in normalized:
                    info, opts = normalized[step.name]
                    converted = {k: _convert(info, k, v) for k, v in opts.items()}
                    steps.append(PassStep(dataclasses.replace(step.pass_, **converted)))
                elif isinstance(step, PassStep):
                    steps.append(step)
                elif isinstance(step, Fixpoint):
                    steps.append(Fixpoint(rebuild(step.body), step.max_iterations))
                else:
                    steps.append(Repeat(rebuild(step.body), step.times))
            return Pipeline(steps)

        return rebuild(self)

    @staticmethod
    def from_any(spec: Any) -> Pipeline:
        """Pipeline text, a Pipeline, a pass instance/function/class, or a list of those."""
        if isinstance(spec, Pipeline):
            return spec
        if isinstance(spec, str):
            return parse_pipeline(spec)
        if isinstance(spec, (list, tuple)):
            steps: list[Step] = []
            for item in spec:
                steps += Pipeline.from_any(item).steps
            return Pipeline(steps)
        if isinstance(spec, type):
            return Pipeline([PassStep(get_pass_info(pass_name(spec)).create())])
        if callable(getattr(spec, "run", None)):
            return Pipeline([PassStep(spec)])
        if callable(spec):
            name = getattr(spec, "pass_name", None) or spec.__name__
            return Pipeline([PassStep(FunctionPass(name, spec))])
        raise PipelineError(f"cannot use {spec!r} as a pipeline (expected text, a pass or a list)")


def _convert(info: PassInfo, key: str, value: Any) -> Any:
    from graphopt.transform.registry import convert_option

    return convert_option(info, key, value)


# ----------------------------------------------------------------------------------- parsing
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


class _Parser:
    def __init__(self, text: str, depth: int = 0):
        self.text = text
        self.pos = 0
        self.depth = depth

    def error(self, message: str, pos: int | None = None) -> PipelineError:
        pos = self.pos if pos is None else pos
        return PipelineError(f"{message}\n  {self.text}\n  {' ' * pos}^")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            found = repr(self.peek()) if self.peek() else "end of text"
            raise self.error(f"expected '{ch}', found {found}")
        self.pos += 1

    def name(self) -> str:
        self.skip_ws()
        m = _NAME.match(self.text, self.pos)
        if not m:
            found = repr(self.peek()) if self.peek() else "end of text"
            raise self.error(f"expected a pass name, found {found}")
        self.pos = m.end()
        return m.group(0)

    def pipeline(self, closing: str = "") -> Pipeline:
        steps: list[Step] = []
        if self.peek() == closing:  # empty pipeline / empty body
            return Pipeline(steps)
        while True:
            steps += self.item()
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                continue
            if ch == closing:
                return Pipeline(steps)
            wanted = repr(closing) if closing else "end of text"
            raise self.error(f"expected ',' or {wanted}, found {repr(ch) if ch else 'end of text'}")

    def options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.peek() != "{":
            return opts
        self.pos += 1
        if self.peek() == "}":
            self.pos += 1
            return opts
        while True:
            start = self.pos
            key = self.name()
            self.expect("=")
            value = self.value()
            if key in opts:
                raise self.error(f"option '{key}' given twice", start)
            opts[key] = value
            ch = self.peek()
            self.pos += 1
            if ch == "}":
                return opts
            if ch != ",":
                raise self.error(f"expected ',' or '}}' after option '{key}'", self.pos - 1)

    def value(self) -> str:
        self.skip_ws()
        start, depth, quote = self.pos, 0, ""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if quote:
                if ch == quote:
                    quote = ""
            elif ch in "\"'":
                quote = ch
            elif ch in "[(":
                depth += 1
            elif ch in "])":
                depth -= 1
            elif depth == 0 and ch in ",}":
                break
            self.pos += 1
        if quote or depth:
            raise self.error("unterminated option value", start)
        text = self.text[start : self.pos].strip()
        if not text:
            raise self.error("empty option value", start)
        return text

    def item(self) -> list[Step]:
        self.skip_ws()
        start = self.pos
        name = self.name()
        opts = self.options()
        if name in ("fixpoint", "repeat") and self.peek() == "(":
            self.pos += 1
            body = self.pipeline(")")
            self.expect(")")
            return [self.repetition(name, opts, body, start)]
        if name in _PASSES or name.replace("_", "-") in _PASSES:
            info = get_pass_info(name)
            try:
                return [PassStep(info.create(**opts))]
            except PipelineError as exc:  # keep the type (PassOptionError), add the position
                raise type(exc)(f"{exc}\n  {self.text}\n  {' ' * start}^") from None
        if name in PIPELINES:
            if opts:
                raise self.error(f"named pipeline '{name}' takes no options", start)
            if self.depth > 20:
                raise self.error(f"named pipeline '{name}' expands recursively", start)
            sub = _Parser(PIPELINES[name], self.depth + 1)
            return sub.pipeline().steps
        if name in ("fixpoint", "repeat"):
            raise self.error(f"'{name}' needs a parenthesized body: {name}(pass1,pass2)", start)
        raise UnknownPassError(
            unknown_pass_message(name, tuple(PIPELINES)) + f"\n  {self.text}\n  {' ' * start}^"
        )

    def repetition(self, kind: str, opts: dict[str, str], body: Pipeline, start: int) -> Step:
        allowed = {"fixpoint": "max", "repeat": "n"}[kind]
        for key in opts:
            if key != allowed:
                raise self.error(f"'{kind}' takes only the option '{allowed}', got '{key}'", start)
        if kind == "repeat" and allowed not in opts:
            raise self.error("'repeat' needs a count: repeat{n=3}(...)", start)
        count = DEFAULT_FIXPOINT_MAX
        if allowed in opts:
            try:
                count = int(opts[allowed])
            except ValueError:
                raise self.error(
                    f"'{kind}' option '{allowed}' expects an int, got {opts[allowed]!r}", start
                ) from None
            if count < 1:
                raise self.error(f"'{kind}' option '{allowed}' must be >= 1", start)
        return Fixpoint(body, count) if kind == "fixpoint" else Repeat(body, count)


def parse_pipeline(text: str) -> Pipeline:
    """Parse pipeline text (see the module docstring) into a :class:`Pipeline`.

    Raises:
        PipelineError: malformed text (the message shows the position).
        UnknownPassError: a name that is neither a pass nor a named pipeline.
        PassOptionError: an unknown option or a value of the wrong type.
    """
    load_pass_library()
    parser = _Parser(text)
    pipeline = parser.pipeline()
    if parser.peek():
        raise parser.error(f"unexpected {parser.peek()!r}")
    return pipeline


def pipeline_names() -> Sequence[str]:
    return sorted(PIPELINES)
