"""to_onnx op by op: every IR op has a lowering, tricky semantics match the interpreter in
onnxruntime, attention picks its fast form, and missing lowerings are typed errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import sympy
import torch

import graphopt
from graphopt.errors import LoweringError, UnknownBackendError
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph
from graphopt.ir.types import TensorType
from graphopt.onnx import to_onnx
from graphopt.ops.registry import all_ops, register_op

F32, I64, BOOL = DType.float32, DType.int64, DType.bool
S = sympy.Symbol("s", integer=True, positive=True)


def build(inputs, fn) -> Graph:
    """A graph with ``inputs`` ({name: TensorType}) whose outputs are ``fn(graph, *values)``."""
    graph = Graph("t")
    values = [graph.add_input(name, t) for name, t in inputs.items()]
    outs = fn(graph, *values)
    graph.set_outputs(list(outs) if isinstance(outs, (tuple, list)) else [outs])
    return graph


def op(graph: Graph, name: str, *inputs, **attrs):
    node = graph.create_node(name, list(inputs), attrs)
    return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)


def const(graph: Graph, array, dtype=None):
    return graph.add_constant(np.asarray(array), "c", dtype)


def check(graph: Graph, *args, opset=None, contrib=True, rtol=1e-5, atol=1e-5):
    """onnxruntime(to_onnx(graph)) equals graphopt.run(graph); returns the model."""
    model = to_onnx(graph, opset=opset, contrib_ops=contrib)
    onnx.checker.check_model(model, full_check=True)
    expected = graphopt.run(graph, *args)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, args)}
    actual = session.run(None, feeds)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == tuple(e.shape)
        if e.dtype == torch.bool or not e.dtype.is_floating_point:
            np.testing.assert_array_equal(a, e.numpy())
        else:
            np.testing.assert_allclose(a, e.numpy(), rtol=rtol, atol=atol, equal_nan=True)
    return model


def f32(*shape):
    return TensorType(shape, F32)


# ------------------------------------------------------------------------------- registry
def test_every_registered_op_has_an_onnx_lowering():
    graphopt.onnx.export.load_lowerings()
    missing = sorted(name for name, d in all_ops().items()
                     if "onnx" not in d.lowerings and not name.startswith("test."))
    assert missing == []


def test_missing_lowering_is_a_typed_error_naming_op_and_node():
    try:
        register_op("test.no_onnx", inputs=("x",), infer=lambda t, a: t[0])(lambda x: x)
    except ValueError:
        pass  # registered by an earlier run in this process
    graph = build({"x": f32(2)}, lambda g, x: op(g, "relu", op(g, "test.no_onnx", x)))
    with pytest.raises(LoweringError) as info:
        to_onnx(graph)
    bad = graph.outputs[0].producer.inputs[0].producer
    assert "'test.no_onnx'" in str(info.value) and bad.describe() in str(info.value)
    assert info.value.failures[0][0] == "test.no_onnx"


def test_unknown_backend_lists_known_ones():
    graph = build({"x": f32(2)}, lambda g, x: op(g, "relu", x))
    with pytest.raises(UnknownBackendError, match="onnxruntime"):
        graphopt.compile(graph, backend="no-such-backend")


def test_compile_options_threads_and_numpy_inputs():
    graph = build({"x": f32(3, 4)}, lambda g, x: op(g, "sigmoid", x))
    fn = graphopt.compile(graph, threads=1, graph_optimization_level="basic")
    assert fn.session.get_session_options().intra_op_num_threads == 1
    x = np.random.randn(3, 4).astype(np.float32)
    torch.testing.assert_close(fn(x), torch.sigmoid(torch.from_numpy(x)))
    with pytest.raises(graphopt.GraphoptError, match="unknown onnxruntime session option"):
        graphopt.compile(graph, not_an_option=1)
    with pytest.raises(graphopt.InputMismatchError):
        fn(np.zeros((2, 4), np.float32))


def test_duplicate_outputs_and_input_passthrough_get_distinct_onnx_outputs():
    graph = build({"x": f32(2)}, lambda g, x: [x, op(g, "relu", x), op(g, "relu", x)])
    graph.set_outputs([graph.inputs[0], graph.outputs[1], graph.outputs[1]])
    model = check(graph, torch.randn(2))
    assert len({o.name for o in model.graph.output}) == 3


def test_identical_constants_share_one_initializer():
    def fn(g, x):
        a = const(g, np.arange(4, dtype=np.float32))
        b = const(g, np.arange(4, dtype=np.float32))
        return op(g, "add", op(g, "mul", x, a), b)

    model = check(build({"x": f32(4)}, fn), torch.randn(4))
    assert len(model.graph.initializer) == 1


def test_value_info_and_symbolic_dims():
    graph = build({"x": f32(S, 3)}, lambda g, x: op(g, "tanh", op(g, "relu", x)))
    model = to_onnx(graph)
    infos = {v.name: v for v in model.graph.value_info}
    relu = graph.outputs[0].producer.inputs[0]
    dims = infos[relu.name].type.tensor_type.shape.dim
    assert dims[0].dim_param == "s" and dims[1].dim_value == 3


# ------------------------------------------------------------------------ tricky semantics
def test_integer_and_float_division_modes_and_remainder():
    def fn(g, a, b):
        outs = [op(g, "div", a, b, rounding_mode=m) for m in (None, "trunc", "floor")]
        ai, bi = op(g, "cast", a, dtype=I64), op(g, "cast", b, dtype=I64)
        outs += [op(g, "div", ai, bi, rounding_mode=m) for m in ("trunc", "floor")]
        outs += [op(g, "remainder", a, b), op(g, "remainder", ai, bi), op(g, "atan2", a, b)]
        return outs

    a = torch.tensor([7.0, -7.0, 7.5, -7.5, 0.0, 3.0, -2.0, 5.0])
    b = torch.tensor([2.0, 2.0, -2.0, -2.0, 3.0, -1.0, 1.5, 7.0])
    check(build({"a": f32(8), "b": f32(8)}, fn), a, b)


def test_type_promotion_and_bool_ops():
    def fn(g, x, i):
        return [op(g, "add", i, const(g, np.float32(0.5))), op(g, "mul", x, i),
                op(g, "where", op(g, "gt", x, const(g, np.float32(0))), x, i),
                op(g, "where", op(g, "lt", x, x), op(g, "ne", x, x), op(g, "eq", i, i)),
                op(g, "logical_xor", x, i), op(g, "bitwise_and", i, const(g, np.int64(6))),
                op(g, "relu", i), op(g, "floor", i), op(g, "clamp", i, min=-1, max=2),
                op(g, "sum", op(g, "gt", x, const(g, np.float32(0))), axes=(1,)),
                op(g, "all", x, axes=(1,)), op(g, "any", i, keepdim=True)]

    check(build({"x": f32(2, 3), "i": TensorType((2, 3), I64)}, fn), torch.randn(2, 3),
          torch.tensor([[1, -2, 3], [0, 4, -5]]))


@pytest.mark.parametrize("opset", [17, 21])
def test_activations_and_normalizations(opset):
    def fn(g, x, y):
        w = const(g, np.linspace(0.5, 1.5, 6, dtype=np.float32))
        b = const(g, np.linspace(-0.2, 0.2, 6, dtype=np.float32))
        return [op(g, "gelu", x), op(g, "gelu", x, approximate="tanh"), op(g, "silu", x),
                op(g, "mish", x), op(g, "hardswish", x), op(g, "hardsigmoid", x),
                op(g, "elu", x, alpha=0.7), op(g, "elu", x, alpha=1.6733, scale=1.0507),
                op(g, "elu", x, alpha=2.0, input_scale=0.5), op(g, "softplus", x, beta=2.0,
                                                                 threshold=3.0),
                op(g, "log1p", op(g, "abs", x)), op(g, "expm1", x), op(g, "rsqrt", op(g, "abs",
                                                                                    x)),
                op(g, "group_norm", y, w, b, groups=3), op(g, "group_norm", y, None, None,
                                                            groups=6),
                op(g, "layer_norm", y, None, None, normalized_shape=(5,)),
                op(g, "var", y, axes=(1, 2), correction=1.0),
                op(g, "std", y, axes=(2,), keepdim=True, correction=0.0),
                op(g, "logsumexp", y, axes=(1,)), op(g, "argmax", y),
                op(g, "argmin", y, keepdim=True), op(g, "log_softmax", y, axis=1)]

    check(build({"x": f32(4, 5), "y": f32(2, 6, 5)}, fn), torch.randn(4, 5) * 3,
          torch.randn(2, 6, 5), opset=opset, atol=2e-5)


def test_pooling_ceil_mode_padding_and_adaptive_windows():
    def fn(g, x):
        return [op(g, "max_pool", x, kernel=(3, 3), stride=(2, 2), padding=(1,), ceil_mode=True),
                op(g, "avg_pool", x, kernel=(2, 2), stride=(2, 2), ceil_mode=True,
                   count_include_pad=False),
                op(g, "avg_pool", x, kernel=(3, 3), stride=(2, 2), padding=(1,),
                   count_include_pad=True),
                op(g, "avg_pool", x, kernel=(2, 2), stride=(1, 1), divisor_override=3),
                op(g, "adaptive_avg_pool", x, output_size=(3, 2)),
                op(g, "adaptive_max_pool", x, output_size=(3, 4)),
                op(g, "adaptive_avg_pool", x, output_size=(1, 1)),
                op(g, "resize", x, size=(14, 16), mode="bilinear", align_corners=False,
                   scales=(2.0, 2.0)),
                op(g, "resize", x, size=(10, 3), mode="nearest"),
                op(g, "resize", x, size=(5, 9), mode="bicubic", align_corners=True),
                op(g, "resize", x, size=(3, 4), mode="area"),
                op(g, "pixel_shuffle", op(g, "reshape", x, shape=(1, 4, 7, 4)), factor=2)]

    check(build({"x": f32(1, 2, 7, 8)}, fn), torch.randn(1, 2, 7, 8), atol=1e-4)


def test_shape_ops():
    def fn(g, x, i):
        return [op(g, "index", x, i, op(g, "neg", i), axes=(0, 2)),  # non-adjacent: front
                op(g, "index", x, i, i, axes=(1, 2)),  # adjacent: in place
                op(g, "index", x, i, axes=(1,)), op(g, "roll", x, shifts=(1, -2), axes=(0, 2)),
                op(g, "roll", x, shifts=(3,), axes=()), op(g, "flip", x, axes=(0, 2)),
                op(g, "tile", x, repeats=(2, 1, 1, 2)),
                op(g, "pad", x, pads=(1, 2, 0, 1), mode="reflect"),
                op(g, "pad", x, pads=(2, 1), mode="replicate"),
                op(g, "pad", x, pads=(1, -1, 1, 1), value=0.5),
                op(g, "slice", x, axis=2, start=-3, end=2**63 - 1, step=2),
                op(g, "squeeze", op(g, "unsqueeze", x, axis=1), axes=(1, 2)),
                op(g, "cumsum", i, axis=0), op(g, "triu", x, diagonal=1),
                op(g, "gather", x, op(g, "expand", op(g, "reshape", op(g, "abs", i),
                                                       shape=(1, 2, 1)),
                                      shape=(2, 2, 3)), axis=1),
                *op(g, "split", x, axis=2, sizes=(1, 3))]

    check(build({"x": f32(3, 4, 4), "i": TensorType((2,), I64)}, fn), torch.randn(3, 4, 4),
          torch.tensor([2, -1]))


def test_symbolic_shapes_compute_at_run_time():
    def fn(g, x):
        n = x.shape[0]
        ones = op(g, "full", shape=(n, 4), value=1.0, dtype=F32)
        rng = op(g, "arange", start=0, end=n, step=1, dtype=F32)
        flat = op(g, "reshape", x, shape=(2 * n, 2))  # 2*s computed from the input's shape
        return [op(g, "add", x, ones), rng, flat,
                op(g, "reshape", x, shape=(-1,)), op(g, "mean", x, axes=(0,))]

    graph = build({"x": f32(S, 4)}, lambda g, x: fn(g, x))
    for n in (1, 5):
        check(graph, torch.randn(n, 4))


# -------------------------------------------------------------------------------- attention
def _attention_graph(shape_q, shape_kv, mask=None, **attrs):
    inputs = {"q": f32(*shape_q), "k": f32(*shape_kv), "v": f32(*shape_kv)}
    if mask is not None:
        inputs["m"] = mask
    return build(inputs, lambda g, *vals: op(g, "attention", *vals, *[None] * (4 - len(vals)),
                                             **attrs))


ATTENTION_CASES = {
    "plain": ((2, 4, 5, 8), (2, 4, 6, 8), None, {}),
    "bool_mask": ((2, 4, 5, 8), (2, 4, 6, 8), TensorType((2, 1, 1, 6), BOOL), {}),
    "float_mask": ((2, 4, 5, 8), (2, 4, 6, 8), f32(5, 6), {"scale": 0.3}),
    "causal": ((1, 2, 6, 8), (1, 2, 6, 8), None, {"is_causal": True}),
    "gqa": ((1, 4, 5, 8), (1, 2, 5, 8), None, {"enable_gqa": True}),
    "rank3": ((3, 5, 8), (3, 6, 8), None, {}),
}


def _attention_args(case):
    q, kv, mask, _ = ATTENTION_CASES[case]
    torch.manual_seed(0)
    args = [torch.randn(q), torch.randn(kv), torch.randn(kv)]
    if mask is not None:
        if mask.dtype is BOOL:
            m = torch.rand(mask.shape) > 0.3
            m[..., 0] = True
            args.append(m)
        else:
            args.append(torch.randn(mask.shape))
    return args


@pytest.mark.parametrize("form", ["contrib", "standard", "opset23"])
@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_attention_forms_match_sdpa(case, form):
    q, kv, mask, attrs = ATTENTION_CASES[case]
    graph = _attention_graph(q, kv, mask, **attrs)
    opset = 23 if form == "opset23" else None
    model = check(graph, *_attention_args(case), opset=opset, contrib=form == "contrib")
    ops = {n.op_type for n in model.graph.node}
    if form == "contrib" and case in ("plain", "bool_mask", "float_mask", "causal"):
        assert "MultiHeadAttention" in ops
    if form == "standard":
        assert "MultiHeadAttention" not in ops and "Softmax" in ops
    if form == "opset23" and case != "rank3":
        assert "Attention" in ops


# ------------------------------------------------------------------------------- fused ops
FUSED_EPILOGUES = [("none", ()), ("relu", ()), ("relu6", ()), ("gelu", ()), ("gelu_tanh", ()),
                   ("silu", ()), ("hardswish", ()), ("hardsigmoid", ()), ("tanh", ()),
                   ("clamp", (-0.5, float("inf"))), ("leaky_relu", (0.2,))]


@pytest.mark.parametrize("contrib", [True, False], ids=["contrib", "standard"])
@pytest.mark.parametrize("activation,params", FUSED_EPILOGUES, ids=[a for a, _ in FUSED_EPILOGUES])
def test_fused_ops_lower_with_their_epilogue(activation, params, contrib):
    epilogue = {"activation": activation, "activation_params": params}

    def fn(g, x, r, a, h):
        w = const(g, np.random.RandomState(0).randn(6, 3, 3, 3).astype(np.float32))
        b = const(g, np.linspace(-1, 1, 6, dtype=np.float32))
        wl = const(g, np.random.RandomState(1).randn(5, 7).astype(np.float32))
        bl = const(g, np.linspace(-1, 1, 5, dtype=np.float32))
        conv = op(g, "fused_conv", x, w, b, r, padding=(1,), **epilogue)
        conv2 = op(g, "fused_conv", x, w, None, None, stride=(2,), **epilogue)
        lin3 = op(g, "fused_linear", a, wl, bl, None, **epilogue)
        lin2 = op(g, "fused_linear", op(g, "reshape", a, shape=(8, 7)), wl, None, None,
                  **epilogue)
        mm = op(g, "fused_matmul", a, h, None, None, trans_b=True, alpha=0.5, **epilogue)
        return [conv, conv2, lin3, lin2, mm]

    graph = build({"x": f32(1, 3, 8, 8), "r": f32(1, 6, 8, 8), "a": f32(2, 4, 7),
                   "h": f32(2, 5, 7)}, fn)
    args = (torch.randn(1, 3, 8, 8), torch.randn(1, 6, 8, 8), torch.randn(2, 4, 7),
            torch.randn(2, 5, 7))
    model = check(graph, *args, contrib=contrib, atol=1e-4, rtol=1e-4)
    # whatever contrib forms the lowering picked, the importer reads them back correctly
    back = graphopt.from_onnx(model)
    for a, e in zip(graphopt.run(back, *args), graphopt.run(graph, *args), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ external data
def test_external_data_is_streamed_aligned_and_deduplicated(tmp_path):
    """Weights go from the IR's arrays straight to the data file: the returned model holds no
    weight bytes, offsets are page-aligned, equal weights are stored once, small ones inline."""
    from graphopt.onnx.export import EXTERNAL_ALIGNMENT, EXTERNAL_MIN_BYTES

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((300, 300)) / 17).astype(np.float32)
    w2 = (rng.standard_normal((300, 300)) / 17).astype(np.float32)
    tiny = np.float32([1.5, -2.0])

    def body(g, x):
        h = op(g, "linear", x, const(g, w1), None)
        h = op(g, "relu", op(g, "matmul", h, const(g, w2)))
        h = op(g, "matmul", h, const(g, w2))  # the same bytes again: one initializer
        return op(g, "mul", h, const(g, np.resize(tiny, (300,))))

    graph = build({"x": TensorType((3, 300), F32)}, body)
    path = tmp_path / "m.onnx"
    model = to_onnx(graph, path, external_data=True)
    assert model.ByteSize() < 20_000  # headers only; the bytes live in m.onnx.data
    external = [t for t in model.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) == 3  # w1, w2 once, the 300-wide multiplier (1200 B >= 1024 B)
    inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all(len(t.raw_data) < EXTERNAL_MIN_BYTES for t in inline)
    for t in external:
        info = {e.key: e.value for e in t.external_data}
        assert info["location"] == "m.onnx.data" and int(info["offset"]) % EXTERNAL_ALIGNMENT == 0
    x = torch.randn(3, 300)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(actual, graphopt.run(graph, x).numpy(), rtol=1e-5, atol=1e-4)
    # The in-memory form holds the same bytes.
    inline_model = to_onnx(graph)
    loaded = onnx.load(str(path))
    for a, b in zip(inline_model.graph.initializer, loaded.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a),
                                      onnx.numpy_helper.to_array(b))
