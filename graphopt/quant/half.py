"""fp16 / bf16 weight storage: constant f32 weights stored in half precision, cast at use.

::

    const %fc.weight: f32[64, 128]          const %fc.weight_f16: f16[64, 128]
    %y = linear(%x, %fc.weight, %b)    ->   %fc.weight_f32: f32[64, 128] = cast(%fc.weight_f16)
                                            %y = linear(%x, %fc.weight_f32, %b)

Compute stays f32; only storage (and the ONNX file, whose initializers stay f16 / bf16) halves.
f16 rounds to nearest even (11-bit mantissa, range +-65504: larger values become inf and are
refused); bf16 keeps the f32 exponent range with an 8-bit mantissa. Constants with fewer than
``min_elements`` elements (scalars, small biases) are left in f32: they cost nothing.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

import numpy as np
import torch

from graphopt.errors import QuantizationError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph, Value

_DTYPES = {"fp16": DType.float16, "bf16": DType.bfloat16}


def half_candidates(graph: Graph, exclude: Sequence[str] = (), min_elements: int = 256
                    ) -> list[Value]:
    """Constant f32 tensors of at least ``min_elements`` elements, not excluded by name."""
    return [v for name, v in graph.constants.items()
            if v.dtype is DType.float32 and v.data.size >= min_elements and v.uses
            and not any(fnmatch.fnmatch(name, pat) for pat in exclude)]


def to_half_bits(data: np.ndarray, dtype: DType) -> np.ndarray:
    """f32 data as f16 values or as bf16 bits (uint16), rounded to nearest even."""
    if dtype is DType.float16:
        with np.errstate(over="ignore"):
            half = data.astype(np.float16)
        if not np.isfinite(half).all() and np.isfinite(data).all():
            raise QuantizationError("a weight exceeds the f16 range (65504); use bf16")
        return half
    return torch.from_numpy(np.ascontiguousarray(data)).to(torch.bfloat16).view(
        torch.int16).numpy().view(np.uint16)


def store_half(graph: Graph, names: set[str], dtype: DType) -> int:
    """In place: the named f32 constants stored as ``dtype`` with one ``cast`` to f32 each."""
    count = 0
    first = next(iter(graph.nodes), None)
    suffix = "f16" if dtype is DType.float16 else "bf16"
    for name in sorted(names):
        value = graph.constants.get(name)
        if value is None or value.dtype is not DType.float32 or not value.uses:
            continue
        half = graph.add_constant(to_half_bits(value.data, dtype), f"{name}_{suffix}",
                                  dtype=dtype)
        uses = list(value.uses)
        with graph.inserting_before(first):
            cast = graph.create_node("cast", [half], {"dtype": DType.float32},
                                     name=f"{name}_f32")
        for node, slot in uses:
            node.set_input(slot, cast.outputs[0])
        if not value.is_graph_output:
            graph.remove_constant(value)
        count += 1
    return count


def half_plan(graph: Graph, mode: str, exclude: Sequence[str]):
    """The fp16 / bf16 mode's plan for ``graphopt.quantize`` (layers = constants)."""
    from graphopt.quant.api import Plan
    from graphopt.quant.report import LayerRecord

    dtype = _DTYPES[mode]
    every = half_candidates(graph)
    chosen = {v.name for v in half_candidates(graph, exclude)}
    records = [LayerRecord(v.name, v.name, tuple(int(d) for d in v.shape), v.name in chosen,
                           reason="" if v.name in chosen else "excluded") for v in every]

    def build(names: set[str]) -> Graph:
        g = graph.clone()
        store_half(g, names, dtype)
        return g

    return Plan(mode, str(dtype), graph, records, build, None)
