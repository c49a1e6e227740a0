"""Triton Inference Server export: ``graphopt export MODEL --triton REPO/``.

For users who already run Triton: the optimized graph lowered to ONNX (Triton's
``onnxruntime_onnx`` platform) in Triton's model repository layout::

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx       (+ model.onnx.data for models over 2 GB)

``config.pbtxt`` is written from the ONNX model itself (its input / output names, element types
and dims), so it always agrees with the file Triton loads. When every input and output shares
one dynamic first dim, that dim is Triton's batch dim: ``max_batch_size`` is set, the dims
listed exclude it, and ``dynamic_batching`` is on (Triton then stacks requests like
``graphopt serve`` does); otherwise ``max_batch_size: 0`` and the full dims (dynamic ones -1).
See https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_configuration.md
"""

from __future__ import annotations

import os
import re
import shutil

from graphopt.errors import GraphoptError
from graphopt.fileio import atomic_write
from graphopt.ir.graph import Graph

# ONNX TensorProto element type -> Triton data type
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16",
                 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                 11: "TYPE_FP64", 16: "TYPE_BF16"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


def export_triton(graph: Graph, repo: str | os.PathLike, name: str, *, max_batch: int = 8,
                  max_queue_delay_us: int = 100, instances: int = 1,
                  int8_weights: str = "s8") -> str:
    """Write ``graph`` as Triton model ``name`` under ``repo``; returns the model's folder.
    An existing ``repo/name`` is replaced only if it is a Triton model folder
    (holds ``config.pbtxt``). ``int8_weights``: "u8" for servers without VNNI (onnxruntime's
    s8 kernels saturate there; graphopt/onnx/int8_weights.py)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise GraphoptError(f"Triton model name {name!r}: use letters, digits, '_', '.', '-' "
                            "(no path separators)")
    for what, value in (("max_batch", max_batch), ("max_queue_delay_us", max_queue_delay_us),
                        ("instances", instances)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (
                0 if what == "max_queue_delay_us" else 1):
            raise GraphoptError(f"export_triton: {what}={value!r} must be a positive integer")
    folder = _model_folder(os.fspath(repo), name)
    from graphopt.onnx.export import to_onnx

    version = os.path.join(folder, "1")
    os.makedirs(version, exist_ok=True)
    model = to_onnx(graph, os.path.join(version, "model.onnx"), int8_weights=int8_weights)
    with atomic_write(os.path.join(folder, "config.pbtxt"), "w") as f:
        f.write(config_text(model, name, max_batch=max_batch,
                            max_queue_delay_us=max_queue_delay_us, instances=instances))
    return folder


def config_text(model, name: str, *, max_batch: int = 8, max_queue_delay_us: int = 100,
                instances: int = 1) -> str:
    """``config.pbtxt`` for the ONNX ``model`` (a ModelProto)."""
    inputs = [_tensor(v) for v in model.graph.input]
    outputs = [_tensor(v) for v in model.graph.output]
    firsts = {t[2][0] if t[2] else None for t in inputs + outputs}
    batched = len(firsts) == 1 and isinstance(next(iter(firsts)), str)
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"',
             f"max_batch_size: {max_batch if batched else 0}"]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{kind} [")
        entries = []
        for tensor_name, dtype, dims in tensors:
            shown = dims[1:] if batched else dims
            listed = ", ".join(str(d) if isinstance(d, int) else "-1" for d in shown)
            entries.append(f'  {{\n    name: "{tensor_name}"\n    data_type: {dtype}\n'
                           f"    dims: [ {listed} ]\n  }}")
        lines += [",\n".join(entries), "]"]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: "
                     f"{max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]")
    return "\n".join(lines) + "\n"


def _tensor(value) -> tuple[str, str, list]:
    """(name, Triton type, dims: int or the dim's parameter name) of an ONNX ValueInfo."""
    t = value.type.tensor_type
    if t.elem_type not in _TRITON_TYPES:
        raise GraphoptError(f"ONNX value {value.name!r}: element type {t.elem_type} has no "
                            "Triton data type")
    if not re.fullmatch(r"[^\"\\\n]+", value.name):
        raise GraphoptError(f"ONNX value name {value.name!r} cannot be written to config.pbtxt")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in t.shape.dim]
    return value.name, _TRITON_TYPES[t.elem_type], dims


def _model_folder(repo: str, name: str) -> str:
    if os.path.islink(repo):
        raise GraphoptError(f"{repo} is a symlink; graphopt does not write through links")
    os.makedirs(repo, exist_ok=True)
    folder = os.path.join(repo, name)
    if os.path.islink(folder):
        raise GraphoptError(f"{folder} is a symlink; graphopt does not write through links")
    if os.path.isdir(folder) and os.listdir(folder):
        if not os.path.isfile(os.path.join(folder, "config.pbtxt")):
            raise GraphoptError(f"{folder} exists and is not a Triton model folder (no "
                                "config.pbtxt): choose another --name or repository")
        shutil.rmtree(os.path.join(folder, "1"), ignore_errors=True)  # the previous export
    return folder
