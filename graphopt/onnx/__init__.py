"""ONNX interop: lower graphopt IR to ONNX (``to_onnx``) and import ONNX models (``from_onnx``).

* ``graphopt.onnx.export``: the lowering driver and :class:`OnnxLowering` context; per-op
  lowerings live in ``lower_*.py`` and register with ``register_lowering("onnx", op)``.
* ``graphopt.onnx.importer``: ``from_onnx`` and the :class:`ImportContext`; per-op converters
  live in ``import_*.py`` and register with ``onnx_converter("OpType")``.
"""

from __future__ import annotations

import os
from typing import Any

from graphopt.onnx.export import OnnxLowering, to_onnx
from graphopt.onnx.importer import from_onnx, onnx_converter


def optimize_onnx_file(in_path: str | os.PathLike, out_path: str | os.PathLike,
                       pipeline: Any = "default", *, opset: int | None = None,
                       contrib_ops: bool = True, **import_options: Any) -> dict[str, Any]:
    """Import an ONNX file, optimize it with graphopt's passes, and save the result as ONNX.

    Args:
        in_path: the .onnx file (external data is read from its directory only).
        out_path: where to write the optimized model (weights over 2 GB go to
            ``<out_path>.data``).
        pipeline: a ``graphopt.optimize`` pipeline ("default", "cleanup", pass list...); None
            runs no passes (a plain import/export round trip).
        opset: the output's default-domain opset (default: graphopt's default, 21).
        contrib_ops: allow onnxruntime contrib ops (com.microsoft) in the output.
        **import_options: passed to ``from_onnx`` (e.g. ``constant_inputs``).

    Returns:
        A summary: ``nodes_in`` / ``nodes_out`` (ONNX node counts), ``ir_nodes_before`` /
        ``ir_nodes_after`` (IR node counts around the passes), ``pipeline``.

    Raises:
        OnnxImportError: the input cannot be imported (unsupported ops are all listed).
        LoweringError: the optimized graph has ops without an ONNX lowering.
    """
    import onnx

    source = onnx.load_model(os.fspath(in_path), load_external_data=False)
    graph = from_onnx(in_path, **import_options)
    before = len(graph.nodes)
    if pipeline is not None:
        from graphopt.transform import optimize

        graph = optimize(graph, pipeline)
    model = to_onnx(graph, out_path, opset=opset, contrib_ops=contrib_ops)
    return {"nodes_in": len(source.graph.node), "nodes_out": len(model.graph.node),
            "ir_nodes_before": before, "ir_nodes_after": len(graph.nodes),
            "pipeline": pipeline}


__all__ = ["OnnxLowering", "from_onnx", "onnx_converter", "optimize_onnx_file", "to_onnx"]
