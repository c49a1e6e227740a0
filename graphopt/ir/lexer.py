"""The lexer under ``graphopt.ir.parser``: a cursor over IR text that reads its tokens.

:class:`Lexer` skips whitespace and ``#`` comments, reads identifiers, ``%values``, numbers,
strings and nested constant data, and raises every error as a ``ParseError`` carrying
``line:col`` and a caret under the culprit. The grammar itself lives in the parser.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from graphopt.errors import ParseError

_SKIP = re.compile(r"(?:\s+|#[^\n]*)*")  # whitespace and comments
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_VALUE = re.compile(r"%([A-Za-z0-9_.]+)")
_NUMBER = re.compile(r"[-+]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|inf|nan)(?![A-Za-z0-9_.])")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')

# Lists in attributes and constant data nest at most this deep (a rank-64 constant is already
# absurd); deeper text is rejected before it can cost anything.
MAX_NESTING = 64


class Lexer:
    """A position in ``text`` and the token readers that advance it (``error`` raises)."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    # --------------------------------------------------------------------------------- errors
    def error(self, message: str, pos: int | None = None) -> NoReturn:
        pos = self.pos if pos is None else min(pos, len(self.text))
        line = self.text.count("\n", 0, pos) + 1
        start = self.text.rfind("\n", 0, pos) + 1
        end = self.text.find("\n", pos)
        source = self.text[start : len(self.text) if end == -1 else end]
        col = pos - start + 1
        pad = "".join(c if c == "\t" else " " for c in source[: col - 1])  # keep tabs aligned
        err = ParseError(f"line {line}:{col}: {message}\n  {source}\n  {pad}^")
        err.line, err.col = line, col
        raise err

    # -------------------------------------------------------------------------------- lexing
    def skip(self) -> None:
        self.pos = _SKIP.match(self.text, self.pos).end()

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def accept(self, token: str) -> bool:
        if self.peek(token):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str, what: str = "") -> None:
        if not self.accept(token):
            self.error(f"expected '{token}'{' ' + what if what else ''}, found {self.found()}")

    def found(self) -> str:
        self.skip()
        if self.pos >= len(self.text):
            return "end of text"
        match = _IDENT.match(self.text, self.pos) or _NUMBER.match(self.text, self.pos)
        return repr(match.group() if match else self.text[self.pos])

    def keyword(self, word: str) -> bool:
        self.skip()
        match = _IDENT.match(self.text, self.pos)
        if match and match.group() == word:
            self.pos = match.end()
        return bool(match and match.group() == word)

    def token(self, regex: re.Pattern, what: str) -> tuple[str, int]:
        """The text matched by ``regex`` (its group 1 if it has one) and where it starts."""
        self.skip()
        match = regex.match(self.text, self.pos)
        if not match:
            self.error(f"expected {what}, found {self.found()}")
        self.pos = match.end()
        return match.group(match.lastindex or 0), match.start()

    def ident(self, what: str) -> tuple[str, int]:
        return self.token(_IDENT, what)

    def value_name(self) -> tuple[str, int]:
        return self.token(_VALUE, "a %value")

    def balanced(self, stops: str) -> tuple[str, int]:
        """Raw text up to a top-level char in ``stops`` (sympy dims may hold '(' and ',')."""
        self.skip()
        start, depth, pos = self.pos, 0, self.pos
        while pos < len(self.text) and self.text[pos] != "\n":
            c = self.text[pos]
            if depth == 0 and c in stops:
                self.pos = pos
                return self.text[start:pos].strip(), start
            depth += (c == "(") - (c == ")")
            pos += 1
        self.error(f"unterminated expression, expected one of {list(stops)}", pos)

    def items(self, close: str, item, what: str) -> list:
        """``item ("," item)* close`` or just ``close``."""
        out: list = []
        if self.accept(close):
            return out
        while True:
            out.append(item())
            if self.accept(close):
                return out
            self.expect(",", f"or '{close}' {what}")


    def string(self) -> str:
        self.skip()
        match = _STRING.match(self.text, self.pos)
        if not match:
            self.error("unterminated string")
        try:
            value = json.loads(match.group())
        except json.JSONDecodeError as exc:
            self.error(f"malformed string: {exc.msg}")
        self.pos = match.end()
        return value

    def literal(self) -> Any:
        """A scalar token ``(text, pos)`` or a nested ``_Seq`` of them, read with a stack."""
        stack: list[_Seq] = []
        while True:
            self.skip()
            pos = self.pos
            if self.accept("["):
                if len(stack) >= MAX_NESTING:
                    self.error(f"constant data nested deeper than {MAX_NESTING} levels", pos)
                stack.append(_Seq([], pos))
                if not self.accept("]"):
                    continue
                value: Any = stack.pop()
            else:
                match = _NUMBER.match(self.text, pos) or _IDENT.match(self.text, pos)
                if not match or (match.re is _IDENT and match.group() not in ("true", "false")):
                    self.error(f"malformed constant element {self.found()}", pos)
                self.pos = match.end()
                value = (match.group(), pos)
            while True:
                if not stack:
                    return value
                stack[-1].append(value)
                if self.accept(","):
                    break
                self.expect("]", "or ',' in constant data")
                value = stack.pop()


class _Seq(list):
    """A bracketed list of constant data, remembering where it starts for error messages."""

    def __init__(self, items: list, pos: int):
        super().__init__(items)
        self.pos = pos


def _number(text: str) -> int | float:
    if any(c in text for c in ".eEn"):  # n: inf / nan
        return float(text)
    return int(text)
