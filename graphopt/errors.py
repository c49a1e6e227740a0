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


class StaleConstantError(GraphoptError):
    """A constant that shares memory with a model's parameter (``graphopt.trace`` does not copy
    weights) was changed in place after the trace: the graph would mix old and new weights."""


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
            "graphopt/frontend/aten/*.py (see docs/ir.md, 'Adding an op') or rewrite the model "
            "code to use supported ops."
        )
        super().__init__("\n".join(lines))


class PipelineError(GraphoptError):
    """A pass pipeline (text or list) is malformed; the message shows where."""


class UnknownPassError(PipelineError):
    """A pass or named pipeline that the pass registry does not know; lists the known ones."""


class PassOptionError(PipelineError):
    """A pass option is unknown or its value does not convert to the option's declared type."""


class PassError(GraphoptError):
    """A pass (or an instrument around it) failed.

    Attributes:
        pass_name: the failing pass's registered name.
        passes_before: names of the passes that ran successfully before it, in order.
        node: description of the node involved, when known.
    """

    def __init__(self, message: str, pass_name: str, passes_before: list[str],
                 node: str | None = None):
        super().__init__(message)
        self.pass_name = pass_name
        self.passes_before = list(passes_before)
        self.node = node


class NumericDriftError(GraphoptError):
    """A graph's outputs moved beyond tolerance compared to a reference run."""


class RewriteError(GraphoptError):
    """A rewrite rule produced an invalid replacement (wrong type, wrong output count)."""


class LoweringError(GraphoptError):
    """A backend cannot lower a graph: ops without a lowering, or an op instance it cannot express.

    Attributes:
        backend: the backend's name ("onnx", "native", ...).
        failures: ``(op, node description, reason)`` triples, one per node that failed.
    """

    def __init__(self, backend: str, failures: list[tuple[str, str, str]]):
        self.backend = backend
        self.failures = list(failures)
        lines = [f"{len(self.failures)} node(s) cannot be lowered to {backend}:"]
        for op, where, reason in self.failures:
            lines.append(f"  - op '{op}' at {where}: {reason}")
        super().__init__("\n".join(lines))


class OnnxImportError(GraphoptError):
    """An ONNX model cannot be imported: malformed, unsafe, or using unsupported ops/types.

    Attributes:
        unsupported: ``(op_type, node_name)`` pairs, one per node without an importer.
        needs_static: graph inputs whose values the IR needs at import time (e.g. the ``shape``
            input of a Reshape); ``from_onnx(..., constant_inputs=...)`` can freeze them.
    """

    def __init__(self, message: str, unsupported: list[tuple[str, str]] | None = None,
                 needs_static: list[str] | None = None):
        self.unsupported = list(unsupported or [])
        self.needs_static = list(needs_static or [])
        super().__init__(message)


class UnknownBackendError(GraphoptError):
    """``graphopt.compile`` was asked for a backend that is not registered."""


class QuantizationError(GraphoptError, ValueError):
    """Quantization cannot proceed: bad calibration data (wrong arity, shape or dtype, no data),
    an unknown mode or observer, or an option that does not apply; names the node when known."""


class ResourceLimitError(GraphoptError, MemoryError):
    """An input asks for more memory (or threads) than the configured budget allows.

    Raised *before* the allocation, so a crafted file cannot exhaust the machine. The budget is
    ``graphopt.limits`` (``GRAPHOPT_MEMORY_BUDGET`` or ``graphopt.limits.set_memory_budget``).

    Attributes:
        requested: bytes (or threads) asked for.
        limit: the budget in force.
        what: what asked for it (a file, a node, an input).
    """

    def __init__(self, what: str, requested: int, limit: int, unit: str = "bytes"):
        self.what, self.requested, self.limit, self.unit = what, int(requested), int(limit), unit
        if unit == "bytes":
            asked, allowed = _human_bytes(requested), _human_bytes(limit)
            hint = ("raise it with GRAPHOPT_MEMORY_BUDGET=<bytes|NGiB> or "
                    "graphopt.limits.set_memory_budget() if the input is trusted")
        else:
            asked, allowed = f"{requested} {unit}", f"{limit} {unit}"
            hint = "ask for fewer"
        super().__init__(f"{what} needs {asked}, over the budget of {allowed}; {hint}")


class ArtifactError(GraphoptError):
    """A saved graphopt artifact (native ``.npz``, torch ``.graphopt`` bundle) is malformed,
    of another format or version, or inconsistent; the message names the file and the entry."""


class CompressionError(GraphoptError, ValueError):
    """Weight compression cannot encode as asked (bits out of range, a code that would exceed
    its length limit), or an encoded stream is corrupt or truncated; the message names the
    stream or section and what is wrong."""


class UnsafeInputError(GraphoptError):
    """Loading the input would run code or leave the folder it was given (pickled ``.pt2``,
    symlinked or path-traversing external data); the message says how to opt in if trusted."""


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


class PruneError(GraphoptError, ValueError):
    """Pruning cannot proceed: an unknown method or importance, a ratio out of range, a missing
    option, or a graph the dependency analysis cannot prune as asked."""


class GenerationError(GraphoptError, ValueError):
    """A decoder cannot be traced or run as asked: a model that is not a causal language model
    with a key/value cache, a prompt longer than the cache, a right-padded batch, a sampling
    option out of range; the message names the model, input or option and what to do."""


class BackendOptionError(GraphoptError, TypeError):
    """A backend was given an option it does not take, or a value of the wrong kind."""


class InternalError(GraphoptError):
    """An entry point met an exception that no validation anticipated.

    Entry points (``parse``, ``from_onnx``, ``compile``, ``quantize``, ``prune``, artifact
    loading) promise a ``GraphoptError`` for any input; an unexpected exception is wrapped in this
    one (the original is its ``__cause__``) instead of escaping raw. If the input was valid, it is
    a bug in graphopt: please report it with the input.
    """


def entry_point(what: str):
    """Decorator for public entry points: any non-``GraphoptError`` exception becomes an
    :class:`InternalError` naming ``what`` and the original exception.

    ``RecursionError`` and ``MemoryError`` are included: a hostile input must not be able to
    surface them raw. ``KeyboardInterrupt`` and ``SystemExit`` pass through untouched.
    """
    import functools

    def decorate(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except GraphoptError:
                raise
            except Exception as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise InternalError(
                    f"{what} failed with {type(exc).__name__}{': ' + detail if detail else ''} "
                    "(no check caught this input; if it is valid, this is a bug in graphopt: "
                    "please report it with the input)"
                ) from exc

        return guarded

    return decorate
