"""The onnxruntime backend: lower to ONNX, run in an ``onnxruntime.InferenceSession``."""

from __future__ import annotations

import os
import platform
import tempfile
import warnings
from typing import Any

import numpy as np
import torch

from graphopt.compile import register_backend
from graphopt.errors import GraphoptError
from graphopt.interpreter import bind_symbols, flatten_inputs, unflatten_outputs
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph

# Models with more constant bytes than this are handed to onnxruntime as a file with external
# data (see OnnxRuntimeModule); below it an in-memory proto is simpler and as fast.
IN_MEMORY_LIMIT = 64 * 2**20

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT",
           "all": "ORT_ENABLE_ALL"}


def session_options(threads: int | None = None, **options: Any):
    """``onnxruntime.SessionOptions`` with graphopt's defaults and the given overrides.

    Defaults: ``intra_op_num_threads=threads`` (``torch.get_num_threads()`` when None), one
    inter-op thread, sequential execution, ``ORT_ENABLE_ALL``. ``graph_optimization_level``
    also accepts "disable", "basic", "extended", "layout", "all" or the enum's name.
    ``session_config`` is a dict of session config entries (``add_session_config_entry``).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads if threads is not None else torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # onnxruntime's shape-merge warnings are noise for users
    for key, value in dict(options.pop("session_config", None) or {}).items():
        so.add_session_config_entry(key, str(value))
    for key, value in options.items():
        if key == "graph_optimization_level" and isinstance(value, str):
            name = _LEVELS.get(value.lower(), value)
            try:
                value = getattr(ort.GraphOptimizationLevel, name)
            except AttributeError:
                raise GraphoptError(f"unknown graph_optimization_level '{value}'; use one of "
                                    f"{', '.join(_LEVELS)}") from None
        if not hasattr(so, key):
            known = sorted(k for k in dir(so) if not k.startswith("_"))
            raise GraphoptError(f"unknown onnxruntime session option '{key}'; "
                                f"SessionOptions has: {', '.join(known)}")
        setattr(so, key, value)
    return so


class OnnxRuntimeModule:
    """A compiled graph: call it like the model. ``onnx_model`` and ``session`` are exposed."""

    def __init__(self, graph: Graph, threads: int | None = None, opset: int | None = None,
                 contrib_ops: bool = True, providers: list[str] | None = None,
                 int8_weights: str = "auto", **options: Any):
        import onnxruntime as ort

        from graphopt.onnx.export import to_onnx

        self.graph = graph
        self.int8_weights = exact_int8_encoding() if int8_weights == "auto" else int8_weights
        for value in graph.inputs:
            if value.dtype is DType.bfloat16:
                raise GraphoptError(f"input %{value.name} is bfloat16, which numpy (and so the "
                                    "onnxruntime Python API) cannot pass")
        self._session_args = (threads, dict(options))
        so = session_options(threads, **options)
        providers = providers or ["CPUExecutionProvider"]
        self._providers = providers
        if graph.constant_bytes() > IN_MEMORY_LIMIT:
            # Large weights go through a file: onnx.save moves each initializer's bytes to the
            # data file and drops them from the proto, and the session reads the file, so the
            # weights are not held three times over (proto, serialized string, session).
            self._tmpdir = tempfile.TemporaryDirectory(prefix="graphopt_ort_")
            path = os.path.join(self._tmpdir.name, "model.onnx")
            self.onnx_model = to_onnx(graph, path, opset=opset, contrib_ops=contrib_ops,
                                      external_data=True, check=False,
                                      int8_weights=self.int8_weights)
            self._source: Any = path
        else:
            self.onnx_model = to_onnx(graph, opset=opset, contrib_ops=contrib_ops, check=False,
                                      int8_weights=self.int8_weights)
            self._source = self.onnx_model.SerializeToString()
        self.session = ort.InferenceSession(self._source, so, providers=providers)
        self._extra_sessions: list[Any] = []
        self.input_names = [i.name for i in self.onnx_model.graph.input]
        self.output_names = [o.name for o in self.onnx_model.graph.output]

    def new_session(self, session_config: dict[str, str]):
        """Another onnxruntime session of the same model, with these session config entries
        on top of this module's (e.g. ``{"session.intra_op.allow_spinning": "0"}``); the
        module keeps it alive."""
        import onnxruntime as ort

        threads, options = self._session_args
        options = dict(options)
        options["session_config"] = {**(options.get("session_config") or {}), **session_config}
        session = ort.InferenceSession(self._source, session_options(threads, **options),
                                       providers=self._providers)
        self._extra_sessions.append(session)
        return session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors = flatten_inputs(self.graph, args, kwargs)
        bind_symbols(self.graph, tensors)  # dtype/shape check with graphopt's error messages
        feeds = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                 for name, t in zip(self.input_names, tensors)}
        outputs = self.session.run(self.output_names, feeds)
        return unflatten_outputs(self.graph, [torch.from_numpy(o) for o in outputs])


# The ops whose ONNX forms run onnxruntime's U8S8 int8 GEMM / conv kernels (QLinearConv,
# QGemm, MatMulInteger, DynamicQuantizeMatMul; dequantize_linear: QDQ pairs it fuses into them).
INT8_GEMM_OPS = frozenset({"qconv", "qlinear", "qconv_dynamic", "qlinear_dynamic",
                           "dequantize_linear"})


class SaturatingInt8Warning(UserWarning):
    """onnxruntime's int8 kernels are not exact on this CPU (see ``int8_saturates``)."""


def int8_saturates() -> bool:
    """True on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI): there onnxruntime's U8S8
    kernels add pairs of u8 x s8 products in int16 with saturation (vpmaddubsw), so a pair
    over 32767 is clipped: wrong results, not rounding (on an AVX2 EPYC, 1% of a digits CNN's
    predictions flipped with s8 weights). Its own remedy, ``session.x64quantprecision=1``,
    fails to load graphopt's int8 graphs in onnxruntime 1.32 (shared zero points); u8 weights
    (``exact_int8_encoding``) run the exact U8U8 kernels instead."""
    from graphopt.costcache import cpu_description

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_description()[1]
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


def exact_int8_encoding() -> str:
    """The fastest int8 weight encoding of the ONNX lowering (``graphopt.onnx.int8_weights``)
    that onnxruntime computes exactly on this CPU: "u8" where U8S8 saturates, else "s8"."""
    return "u8" if int8_saturates() else "s8"


@register_backend("onnxruntime")
def compile_onnxruntime(graph: Graph, *, threads: int | None = None, int8_weights: str = "auto",
                        **options: Any) -> OnnxRuntimeModule:
    """Backend factory for ``graphopt.compile(graph, backend="onnxruntime")``.

    ``int8_weights``: "auto" (default) stores int8 GEMM / conv weights so that onnxruntime's
    kernels are exact on this CPU (``exact_int8_encoding``); "s8" / "u8" force an encoding.
    Warns (``SaturatingInt8Warning``) when "s8" is forced for a graph with int8 GEMMs /
    convolutions on a CPU where onnxruntime's U8S8 kernels saturate (``int8_saturates``)."""
    encoding = exact_int8_encoding() if int8_weights == "auto" else int8_weights
    # op-name check: which ops lower to onnxruntime's U8S8 kernels is a fact of the lowering
    int8_ops = sorted({n.op for n in graph.nodes} & INT8_GEMM_OPS)
    if int8_ops and encoding == "s8" and int8_saturates():
        warnings.warn(
            f"graph '{graph.name}' has int8 ops ({', '.join(int8_ops)}) lowered with s8 "
            "weights and this CPU has no VNNI: onnxruntime's int8 kernels saturate pairs of "
            "products here, so its results can differ from the quantized model's by more than "
            "rounding. Use int8_weights='u8' (or 'auto'), backend='native', or a CPU with VNNI.",
            SaturatingInt8Warning, stacklevel=3)
    return OnnxRuntimeModule(graph, threads=threads, int8_weights=encoding, **options)
