"""The inputs side of the ONNX import: external data read and checked before anything is
trusted (``with_external_data``), then initializers and graph inputs as IR constants and inputs
(``add_graph_inputs``, with ``constant_inputs`` freezing)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import torch

from graphopt.errors import OnnxImportError
from graphopt.ir.dtypes import torch_to_numpy
from graphopt.ir.types import TensorType
from graphopt.onnx._common import external_to_array, tensor_to_array
from graphopt.onnx.import_context import ImportContext
from graphopt.onnx.loading import (
    check_model,
    has_external_data,
    read_external,
    read_external_bytes,
    resolve_external,
    tensors_of,
)
from graphopt.onnx.validation import value_type


def with_external_data(model: onnx.ModelProto, callers_proto: bool, folder: str | None,
                        path: str | None, check: bool
                        ) -> tuple[onnx.ModelProto, dict[int, np.ndarray]]:
    """Validate every external reference (confinement, length, budget) before reading any,
    run the checker (on the file when the data lies next to it, so the checker sees it), then
    read the data. Returns the model and the external bytes of its initializers by index,
    read straight into arrays (the graph's constants view them: one copy of the weights);
    attribute tensors, and every tensor when the checker must see the data inline (model and
    data in different folders), get their data inline (in a copy of the caller's proto)."""
    externals, total = [], 0
    for t in tensors_of(model):
        if has_external_data(t):
            ref = resolve_external(t, folder, total)
            total += ref.length
            externals.append(ref)
    same_folder = path is not None and folder is not None and os.path.realpath(
        folder) == os.path.realpath(os.path.dirname(os.path.abspath(path)))
    if check and (not externals or same_folder):
        check_model(model, "the model", path if externals else None)
    if not externals:
        return model, {}
    inline_all = check and not same_folder
    refs = iter(externals)
    preloaded: dict[int, np.ndarray] = {}
    for index, t in enumerate(model.graph.initializer):
        if has_external_data(t):
            ref = next(refs)
            if not inline_all:
                preloaded[index] = read_external_bytes(t, ref)
    rest = list(refs)  # attribute tensors (and, with inline_all, nothing was read yet)
    if not rest and not inline_all:
        return model, preloaded
    if callers_proto:  # do not fill the caller's proto with weight bytes
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    refs = iter(externals)
    for i, t in enumerate(tensors_of(model)):
        if has_external_data(t):
            ref = next(refs)
            if i >= len(model.graph.initializer) or i not in preloaded:
                read_external(t, ref)
    if inline_all:
        check_model(model, "the model")
    return model, preloaded


def add_graph_inputs(ctx: ImportContext, model: onnx.ModelProto, frozen: dict,
                      preloaded: dict[int, np.ndarray]) -> None:
    """Initializers become constants (validated against their dims and the budget; those with
    external data view the bytes in ``preloaded``); graph inputs become IR inputs (known
    dtypes, dims >= 0), or constants when frozen."""
    graph, symbols = ctx.graph, {}
    for index, init in enumerate(model.graph.initializer):
        what = f"initializer '{init.name}'"
        if index in preloaded:
            array, dtype = external_to_array(init, preloaded[index], what)
        else:
            array, dtype = tensor_to_array(init, what)
        ctx.env[init.name] = graph.add_constant(array, init.name, dtype)
    for info in model.graph.input:
        if info.name in ctx.env:
            continue  # an initializer listed as input (IR version < 4): a constant
        t = value_type(info, symbols, "input")
        if info.name in frozen:
            array = _frozen_array(info.name, frozen.pop(info.name), t)
            ctx.env[info.name] = graph.add_constant(array, info.name, t.dtype)
        else:
            ctx.env[info.name] = graph.add_input(info.name, t)
    if frozen:
        raise OnnxImportError(f"constant_inputs names no graph input: {sorted(frozen)}")


def _frozen_array(name: str, data, t: TensorType) -> np.ndarray:
    """A ``constant_inputs`` entry as an array of the input's declared dtype and shape."""
    if isinstance(data, torch.Tensor):
        array, _ = torch_to_numpy(data.detach().to(t.dtype.torch))
    else:
        try:
            array = np.asarray(data).astype(t.dtype.numpy)
        except (TypeError, ValueError) as exc:
            raise OnnxImportError(f"constant_inputs['{name}'] is not a {t.dtype} array: "
                                  f"{exc}") from exc
    if array.ndim != t.rank or any(isinstance(d, int) and d != s
                                   for d, s in zip(t.shape, array.shape)):
        raise OnnxImportError(f"constant_inputs['{name}'] has shape {tuple(array.shape)}, but "
                              f"input '{name}' is declared {t}")
    return array
