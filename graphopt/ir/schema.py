"""The IR's view of the op library: a lookup hook that ``graphopt.ops`` installs.

``Graph.create_node`` checks attributes and infers types, the verifier checks every node against
its op and the parser resolves op names; all three need the op registry, which lives a layer up
(``graphopt.ops``: schemas, traits, reference kernels, built on the IR's types). Importing it
from here would make ``ir`` and ``ops`` a cycle, so the IR asks through this hook instead, and
``graphopt.ops.registry`` installs its lookup when it is imported (importing ``graphopt`` or any
of its subpackages does, through the package's ``__init__``). This is the "a layer that needs
something from above gets it passed in" rule of the layer contract (docs/architecture.md).

What the IR needs of an op is the ``OpSchema`` protocol below, a subset of
``graphopt.ops.registry.OpDef``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

from graphopt.errors import UnknownOpError


class OpSchema(Protocol):
    """What ``ir`` uses of an op definition (``graphopt.ops.registry.OpDef`` provides it)."""

    name: str
    inputs: tuple[str, ...]
    traits: frozenset[str]

    @property
    def variadic(self) -> bool: ...

    def check_attrs(self, attrs: Any, context: str = "") -> Any: ...

    def check_arity(self, inputs: Sequence[Any], context: str = "") -> None: ...

    def infer_types(self, input_types: Sequence[Any], attrs: Any) -> list: ...


_get_op: Callable[[str], OpSchema] | None = None
_all_ops: Callable[[], Mapping[str, OpSchema]] | None = None


def install_op_library(
    get_op: Callable[[str], OpSchema], all_ops: Callable[[], Mapping[str, OpSchema]]
) -> None:
    """Make ``get_op``/``all_ops`` the IR's op lookup (``graphopt.ops.registry`` calls this).

    ``get_op(name)`` must raise ``UnknownOpError`` for a name it does not know.
    """
    global _get_op, _all_ops
    _get_op, _all_ops = get_op, all_ops


def get_op(name: str) -> OpSchema:
    """The schema of op ``name``.

    Raises:
        UnknownOpError: the op library does not know ``name``, or no op library is installed.
    """
    if _get_op is None:
        raise UnknownOpError(
            f"cannot look up op '{name}': no op library is installed; import graphopt.ops "
            "(importing graphopt does) to register the built-in ops"
        )
    return _get_op(name)


def all_ops() -> Mapping[str, OpSchema]:
    """Every op of the installed library by name (empty when none is installed)."""
    return {} if _all_ops is None else _all_ops()
