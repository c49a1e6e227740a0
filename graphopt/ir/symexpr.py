"""Size expressions read from files, parsed by a small grammar of our own.

A symbolic dim in IR text, a native artifact or a generated module is text such as ``s0``,
``2*s0 + 1``, ``(s0//2)`` or ``Max(1, s0 - 3)``. Handing that text to ``sympy.sympify`` would
evaluate it as Python (``sympify`` calls ``eval``), so a crafted model file could run code. This
module reads it with a fixed grammar instead and builds the sympy expression from tokens; no
string is ever evaluated::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/" | "//" | "%") unary)*
    unary   := ("-" | "+") unary | power
    power   := atom ["**" INT]                      (exponent 0..8)
    atom    := INT | NAME | "(" expr ")" | FUNC "(" expr ("," expr)* ")"
    FUNC    := min | max | Min | Max | floor | ceiling | ceil | Mod | PythonMod | FloorDiv
             | CeilDiv

``NAME`` is a size symbol (a positive integer, as torch.export declares them); ``a // b`` is
``floor(a / b)`` and ``a % b`` is ``Mod(a, b)``, as sympy reads them. The input is bounded
(length, token count, nesting depth, literal digits) so a hostile string cannot make the parser
recurse deeply or build huge numbers; anything outside the grammar raises
:class:`SizeExprError`, a :class:`~graphopt.errors.ParseError`.
"""

from __future__ import annotations

import re
from functools import lru_cache

import sympy

from graphopt.errors import ParseError

MAX_LENGTH = 1000
MAX_TOKENS = 400
MAX_DEPTH = 48
MAX_DIGITS = 19  # int64 is the widest dim any backend stores
MAX_EXPONENT = 8
MAX_CONSTANT = 1 << 63  # no dim or folded number beyond int64

_TOKEN = re.compile(r"\s*(?:(?P<int>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|"
                    r"(?P<op>//|\*\*|[-+*/%(),]))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SizeExprError(ParseError):
    """Text that is not a size expression of the grammar in ``graphopt.ir.symexpr``."""


def _max(*args):
    return sympy.Max(*args)


def _min(*args):
    return sympy.Min(*args)


def _ceil_div(a, b):
    return sympy.ceiling(a / b)


# name -> (builder, minimum argument count, maximum argument count)
_FUNCTIONS = {
    "min": (_min, 2, 16), "Min": (_min, 2, 16), "max": (_max, 2, 16), "Max": (_max, 2, 16),
    "floor": (sympy.floor, 1, 1), "ceiling": (sympy.ceiling, 1, 1), "ceil": (sympy.ceiling, 1, 1),
    "Mod": (sympy.Mod, 2, 2), "PythonMod": (sympy.Mod, 2, 2),
    "FloorDiv": (lambda a, b: sympy.floor(a / b), 2, 2), "CeilDiv": (_ceil_div, 2, 2),
}


def size_symbol(name: str) -> sympy.Symbol:
    """The size symbol ``name``: an integer > 0, as torch.export's symbols, so they compare equal.

    Raises:
        SizeExprError: ``name`` is not an identifier or is a function name of the grammar.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in _FUNCTIONS:
        raise SizeExprError(f"{name!r} is not a valid size symbol name (letters, digits, '_')")
    return sympy.Symbol(name, integer=True, positive=True)


def parse_size_expr(text: str) -> sympy.Expr:
    """Parse ``text`` into a sympy expression over size symbols (no evaluation of the text).

    Raises:
        SizeExprError: the text is outside the grammar or over one of the bounds; the message
            quotes the text and says where.
    """
    if not isinstance(text, str):
        raise SizeExprError(f"a size expression must be text, got {type(text).__name__}")
    return _parse_cached(text)


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> sympy.Expr:
    if len(text) > MAX_LENGTH:
        raise SizeExprError(f"size expression is {len(text)} characters long (at most "
                            f"{MAX_LENGTH}): {text[:40]!r}...")
    return _ExprParser(text).parse()


class _ExprParser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = self._tokenize(text)
        self.index = 0
        self.depth = 0

    def fail(self, message: str):
        raise SizeExprError(f"malformed size expression {self.text!r}: {message}")

    def _tokenize(self, text: str) -> list[tuple[str, str, int]]:
        tokens, pos = [], 0
        end = len(text.rstrip())
        while pos < end:
            match = _TOKEN.match(text, pos)
            if not match:
                self.fail(f"unexpected character {text[pos:].lstrip()[:1]!r} at offset "
                          f"{len(text) - len(text[pos:].lstrip())}")
            kind = match.lastgroup
            tokens.append((kind, match.group(kind), match.start(kind)))
            pos = match.end()
            if len(tokens) > MAX_TOKENS:
                self.fail(f"more than {MAX_TOKENS} tokens")
        if not tokens:
            self.fail("it is empty")
        return tokens

    # ------------------------------------------------------------------------------ helpers
    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def accept(self, op: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] == op:
            self.index += 1
            return True
        return False

    def expect(self, op: str) -> None:
        if not self.accept(op):
            token = self.peek()
            found = "the end" if token is None else repr(token[1])
            self.fail(f"expected {op!r}, found {found}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested deeper than {MAX_DEPTH} levels")

    # ------------------------------------------------------------------------------ grammar
    def parse(self) -> sympy.Expr:
        expr = self.expr()
        token = self.peek()
        if token is not None:
            self.fail(f"unexpected {token[1]!r} at offset {token[2]}")
        return expr

    def expr(self) -> sympy.Expr:
        self.enter()
        result = self.term()
        while True:
            if self.accept("+"):
                result = result + self.term()
            elif self.accept("-"):
                result = result - self.term()
            else:
                break
        self.depth -= 1
        return result

    def term(self) -> sympy.Expr:
        result = self.unary()
        while True:
            if self.accept("*"):
                result = result * self.unary()
            elif self.accept("//"):
                result = sympy.floor(result / self._divisor(self.unary()))
            elif self.accept("/"):
                result = result / self._divisor(self.unary())
            elif self.accept("%"):
                result = sympy.Mod(result, self._divisor(self.unary()))
            else:
                return result

    def _divisor(self, value: sympy.Expr) -> sympy.Expr:
        if value.is_zero:
            self.fail("division by zero")
        return value

    def unary(self) -> sympy.Expr:
        sign = 1
        while True:  # a run of signs, read iteratively: '- - - x' cannot recurse
            if self.accept("-"):
                sign = -sign
            elif not self.accept("+"):
                break
        value = self.power()
        return -value if sign < 0 else value

    def power(self) -> sympy.Expr:
        base = self.atom()
        if self.accept("**"):
            token = self.peek()
            if token is None or token[0] != "int" or int(token[1]) > MAX_EXPONENT:
                self.fail(f"an exponent must be an integer literal 0..{MAX_EXPONENT}")
            self.index += 1
            result = base ** int(token[1])
            if result.is_number and abs(result) > MAX_CONSTANT:
                self.fail("a constant power beyond the int64 range")
            return result
        return base

    def atom(self) -> sympy.Expr:
        token = self.peek()
        if token is None:
            self.fail("it ends where an operand was expected")
        kind, text, pos = token
        self.index += 1
        if kind == "int":
            if len(text.lstrip("0")) > MAX_DIGITS:
                self.fail(f"integer literal with more than {MAX_DIGITS} digits")
            return sympy.Integer(int(text))
        if kind == "name":
            if text in _FUNCTIONS:
                return self.call(text)
            return size_symbol(text)
        if text == "(":
            inner = self.expr()
            self.expect(")")
            return inner
        self.fail(f"unexpected {text!r} at offset {pos}")

    def call(self, name: str) -> sympy.Expr:
        build, least, most = _FUNCTIONS[name]
        self.expect("(")
        args = [self.expr()]
        while self.accept(","):
            args.append(self.expr())
        self.expect(")")
        if not least <= len(args) <= most:
            self.fail(f"{name}() takes {least if least == most else f'{least} to {most}'} "
                      f"argument(s), got {len(args)}")
        if build in (sympy.Mod,) or name in ("FloorDiv", "CeilDiv"):
            self._divisor(args[1])
        return build(*args)


__all__ = ["MAX_DEPTH", "MAX_LENGTH", "SizeExprError", "parse_size_expr", "size_symbol"]
