"""Typed exceptions of graphopt.

Every error that a user can trigger derives from :class:`GraphoptError`. Messages name the node,
the op and what to do, because "it broke" is not actionable and a silently wrong model is worse.
"""

from __future__ import annotations


class GraphoptError(Exception):
    """Base class of every error graphopt raises on purpose."""


class VerificationError(GraphoptError):
    """The graph breaks an IR invariant (SSA, order, types, attributes)."""


class TypeInferenceError(GraphoptError):
    """An op's shape/dtype rule rejects its operands (wrong rank, mismatching dims...)."""


class UnknownOpError(GraphoptError):
    """An IR op name that the op registry does not know."""


class AttrError(GraphoptError):
    """An op attribute is missing, unknown or of the wrong kind."""


class ParseError(GraphoptError):
    """The IR text is malformed; the message carries line and column."""


class InputMismatchError(GraphoptError):
    """The inputs given to run/compile do not match the graph's inputs."""


class UnsupportedOpError(GraphoptError):
    """The frontend met ops it cannot map; lists every one of them at once.

    Attributes:
        ops: list of ``(aten_op_name, source_location)`` pairs, one per unmapped call site.
    """

    def __init__(self, ops: list[tuple[str, str]]):
        self.ops = list(ops)
        lines = [f"{len(self.ops)} unsupported op call(s) while tracing into graphopt IR:"]
        for name, where in self.ops:
            lines.append(f"  - {name}  at {where}")
        distinct = sorted({name for name, _ in self.ops})
        lines.append(
            "Distinct ops: " + ", ".join(distinct) + ". Add a converter in "
            "graphopt/frontend/aten_*.py (see docs/ir.md, 'Adding an op') or rewrite the model "
            "code to use supported ops."
        )
        super().__init__("\n".join(lines))
