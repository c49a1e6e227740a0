"""Whether ``Target.backend`` runs what a quantize plan makes, asked of the backends' lowerings.

``graphopt.quantize(..., target=Target(backend))`` checks each graph its plan builds: every node
whose op the quantization introduced (not in the float graph) must have a lowering for that
backend (``OpDef.lowerings`` under ``graphopt.compile.LOWERING_KEYS[backend]``); a backend
without a lowering for, say, ``qconv_dynamic`` (dynamic mode with ``convs=True``) is refused.
The check runs on the first build, before the sensitivity measurements, and names the ops, the
layers, the backend and what to do instead.

A lowering may still decline one node at compile time (e.g. the native ``qconv`` runs 2-D
convolutions only); that is reported by ``graphopt.compile`` (``LoweringError``).
"""

from __future__ import annotations

from graphopt.compile import LOWERING_KEYS, Target
from graphopt.errors import QuantizationError
from graphopt.ir.graph import Graph, Node


def load_lowerings(key: str) -> None:
    """Register the lowerings of backend lowering ``key`` ("native", "onnx")."""
    if key == "native":
        from graphopt.native import lower  # noqa: F401  (registers the lowerings)
    elif key == "onnx":
        from graphopt.onnx.export import load_lowerings as load_onnx

        load_onnx()


def unsupported_nodes(graph: Graph, float_ops: set[str], backend: str) -> list[Node]:
    """Nodes of ``graph`` with an op not in ``float_ops`` that ``backend`` has no lowering for
    (none for a backend without ``LOWERING_KEYS`` entry, e.g. the interpreter)."""
    key = LOWERING_KEYS.get(backend)
    if key is None:
        return []
    load_lowerings(key)
    return [n for n in graph.nodes if n.op not in float_ops and key not in n.opdef.lowerings]


def backends_running(ops: set[str]) -> list[str]:
    """The checked backends with a lowering for every op in ``ops``."""
    from graphopt.ops.registry import get_op

    found = []
    for backend, key in LOWERING_KEYS.items():
        load_lowerings(key)
        if all(key in get_op(op).lowerings for op in ops):
            found.append(backend)
    return found


def check_runs_on(target: Target | None, float_graph: Graph, graph: Graph, mode: str) -> None:
    """Raise ``QuantizationError`` if ``target.backend`` cannot run a node the quantization of
    ``float_graph`` into ``graph`` introduced; the message names the ops, the layers, the
    backend, and what to do (keep those layers float, or target a backend that runs them)."""
    if target is None:
        return
    float_ops = {n.op for n in float_graph.nodes}
    missing = unsupported_nodes(graph, float_ops, target.backend)
    if not missing:
        return
    ops = sorted({n.op for n in missing})
    names = [n.name for n in missing]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    others = [b for b in backends_running(set(ops)) if b != target.backend]
    instead = f", or target {' / '.join(others)}" if others else ""
    raise QuantizationError(
        f"graphopt.quantize(mode='{mode}') makes {', '.join(ops)} ({shown}), which the "
        f"{target.backend} backend has no kernel for: keep those layers float "
        f"(exclude=[...]), choose another mode or option{instead}")
