"""Weights are shared, not copied: ``graphopt.trace`` borrows the model's parameters (zero-copy
constants), ``optimize`` keeps sharing what it does not change, and a parameter changed in place
after the trace makes lowering refuse the graph instead of mixing old and new weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphopt
from graphopt.errors import StaleConstantError


class Block(torch.nn.Module):
    """A linear, a layer norm and a Conv1D-style matmul by a [in, out] weight (GPT-2's layout),
    which fuse-matmul-add turns into a linear with a transposed copy."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 32)
        self.norm = torch.nn.LayerNorm(32)
        self.w_in_out = torch.nn.Parameter(torch.randn(32, 8))
        self.b = torch.nn.Parameter(torch.randn(8))

    def forward(self, x):
        return torch.addmm(self.b, self.norm(self.fc(x)), self.w_in_out)


def _param_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy() for name, p in model.named_parameters()}


def _sharing(graph, model) -> dict[str, bool]:
    arrays = _param_arrays(model)
    return {name: any(np.shares_memory(v.data, arr) for v in graph.constants.values())
            for name, arr in arrays.items()}


@pytest.fixture()
def model_and_input():
    return Block().eval(), torch.randn(4, 16)


def test_trace_borrows_every_parameter(model_and_input):
    model, x = model_and_input
    graph = graphopt.trace(model, (x,))
    assert all(_sharing(graph, model).values()), _sharing(graph, model)
    assert all(not v.data.flags.writeable for v in graph.constants.values())
    assert model.fc.weight.detach().numpy().flags.writeable  # the model's own view untouched
    torch.testing.assert_close(graphopt.run(graph, x), model(x))
    copied = graphopt.trace(model, (x,), copy_weights=True)
    assert not any(_sharing(copied, model).values())
    assert all(v.owner is None for v in copied.constants.values())


def test_optimize_shares_every_weight_even_transposed(model_and_input):
    """fuse-matmul-add's W^T is a Fortran-order view of the model's [in, out] weight."""
    model, x = model_and_input
    graph = graphopt.trace(model, (x,))
    optimized = graphopt.optimize(graph, "default")
    assert all(_sharing(optimized, model).values()), _sharing(optimized, model)
    linears = [n for n in optimized.nodes if n.op == "linear"]
    assert len(linears) == 2
    transposed = linears[1].inputs[1]
    np.testing.assert_array_equal(transposed.data, model.w_in_out.detach().numpy().T)
    assert transposed.data.flags.f_contiguous and not transposed.data.flags.c_contiguous
    assert not transposed.data.flags.writeable and transposed.owner is not None
    torch.testing.assert_close(graphopt.run(optimized, x), model(x))


@pytest.mark.parametrize("backend", ["native", "native-bf16", "native-int8", "onnxruntime",
                                     "torch", "native-artifact"])
def test_transposed_view_weights_run_everywhere(model_and_input, backend, tmp_path):
    """Every consumer of a transposed-view constant reads it as the logical [out, in] array
    (the native GEMM through strides, the others after a copy to C order)."""
    model, x = model_and_input
    optimized = graphopt.optimize(graphopt.trace(model, (x,)), "default")
    want = model(x).detach()
    tolerance = {"atol": 1e-5, "rtol": 1e-5}
    if backend == "native-bf16":
        fn, tolerance = (graphopt.compile(optimized, backend="native", precision="bf16"),
                         {"atol": 0.05, "rtol": 0.05})
    elif backend == "native-int8":
        fn, tolerance = (graphopt.compile(graphopt.quantize(optimized), backend="native"),
                         {"atol": 0.1, "rtol": 0.1})
    elif backend == "torch":
        fn = graphopt.to_torch(optimized)
    elif backend == "native-artifact":
        graphopt.compile(optimized, backend="native").save(tmp_path / "m.npz")
        fn = graphopt.native.load(tmp_path / "m.npz")
    else:
        fn = graphopt.compile(optimized, backend=backend)
    got = fn(x)
    torch.testing.assert_close(got.detach() if isinstance(got, torch.Tensor) else got, want,
                               **tolerance)
    assert float(want.abs().mean()) > 0.1  # not a vacuous comparison


@pytest.mark.parametrize("lower", ["native", "onnx", "optimized-native", "transposed"])
def test_in_place_change_after_trace_is_refused(model_and_input, lower, tmp_path):
    model, x = model_and_input
    graph = graphopt.trace(model, (x,))
    snapshot = graphopt.trace(model, (x,), copy_weights=True)
    want = model(x).detach()
    changed = model.w_in_out if lower == "transposed" else model.norm.weight
    with torch.no_grad():
        changed.mul_(2.0)
    name = "w_in_out" if lower == "transposed" else r"norm\.weight"
    with pytest.raises(StaleConstantError, match=name + r".*Trace the model again"):
        if lower == "native":
            graphopt.compile(graph, backend="native")
        elif lower == "onnx":
            graphopt.to_onnx(graph, tmp_path / "m.onnx")
        elif lower == "transposed":  # only the transposed view is left of w_in_out
            optimized = graphopt.optimize(graph)
            assert "w_in_out" not in optimized.constants
            graphopt.compile(optimized, backend="native")
        else:
            graphopt.compile(graphopt.optimize(graph), backend="native")
    # The snapshot is independent of the model; a new trace sees the new weights.
    torch.testing.assert_close(graphopt.compile(snapshot, backend="native")(x), want)
    retraced = graphopt.trace(model, (x,))
    torch.testing.assert_close(graphopt.compile(retraced, backend="native")(x), model(x))


def test_native_module_refuses_new_plan_after_change(model_and_input):
    """A compiled native module plans each new input shape from the graph's weights: a change
    after compile is caught when the next plan is built."""
    model, x = model_and_input
    fn = graphopt.compile(graphopt.trace(model, (x,), dynamic_shapes=({0: torch.export.Dim(
        "n", min=2, max=64)},)), backend="native")
    torch.testing.assert_close(fn(x), model(x))
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    with pytest.raises(StaleConstantError, match=r"fc\.bias"):
        fn(torch.randn(7, 16))


def test_bfloat16_parameters_are_borrowed_too():
    model = torch.nn.Linear(8, 4).to(torch.bfloat16).eval()
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    graph = graphopt.trace(model, (x,))
    bits = model.weight.detach().view(torch.uint16).numpy()
    assert any(np.shares_memory(v.data, bits) for v in graph.constants.values())
    torch.testing.assert_close(graphopt.run(graph, x), model(x))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_native_plans_share_packed_weights(model_and_input, precision):
    """Each new input shape gets its own native plan, but a weight is packed once: the second
    plan's GEMMs reuse the first plan's packings (csrc/rt_pack_cache.h), and the packings go
    away with the last plan holding them."""
    from graphopt import _C

    model, _ = model_and_input
    x = torch.randn(40, 16)
    graph = graphopt.optimize(graphopt.trace(
        model, (x,), dynamic_shapes=({0: torch.export.Dim("n", min=2, max=256)},)))
    if precision == "int8":
        graph = graphopt.quantize(graph)
    fn = graphopt.compile(graph, backend="native",
                          precision="bf16" if precision == "bf16" else "fp32")
    start = _C.pack_cache_stats()
    first = fn(x)
    after_first = _C.pack_cache_stats()
    second = fn(torch.randn(48, 16))
    after_second = _C.pack_cache_stats()
    assert after_first["packs"] - start["packs"] == 2  # the two linear weights
    assert after_second["packs"] == after_first["packs"]
    assert after_second["hits"] - after_first["hits"] == 2
    assert fn.num_cached_plans == 2
    want = model(x).detach()
    tolerance = {"fp32": 1e-5, "bf16": 0.02, "int8": 0.05}[precision] * float(want.abs().max())
    torch.testing.assert_close(first, want, atol=tolerance, rtol=0)
    assert second.shape == (48, 8)
    live = after_second["live"]
    del fn
    import gc

    gc.collect()
    assert _C.pack_cache_stats()["live"] <= live - 2


def test_gemv_and_gemm_plans_share_one_packing(model_and_input):
    """A decoder's prefill plan (M > 4 rows: GEMM) and decode plan (M <= 4: GEMV) of one fp32
    weight read the same packed copy (the GEMV walks the GEMM's K-blocked panels): one
    packing per weight, not one per path (session 15: GPT-2 fp32 decoding peak RSS 1501 ->
    1185 MiB)."""
    from graphopt import _C

    model, _ = model_and_input
    rows = torch.export.Dim("n", min=2, max=256)
    graph = graphopt.optimize(graphopt.trace(model, (torch.randn(40, 16),),
                                             dynamic_shapes=({0: rows},)))
    fn = graphopt.compile(graph, backend="native")
    start = _C.pack_cache_stats()
    prefill = torch.randn(40, 16)
    fn(prefill)
    after_gemm = _C.pack_cache_stats()
    steps = [s.kernel for s in fn.plan.steps]
    for rows in (3, 2):  # GEMV plans
        x = torch.randn(rows, 16)
        torch.testing.assert_close(fn(x), model(x).detach(), rtol=1e-5, atol=1e-5)
    after_gemv = _C.pack_cache_stats()
    assert after_gemm["packs"] - start["packs"] == 2
    assert after_gemv["packs"] == after_gemm["packs"], (steps, after_gemv)
    assert after_gemv["hits"] - after_gemm["hits"] == 4
    assert fn.num_cached_plans == 3


@pytest.mark.parametrize("int8", [False, True])
def test_native_modules_share_conv_packings(int8):
    """Two modules compiled from one graph pack each convolution weight once (fp32 im2col
    convolution in the plain layout, static int8 convolution)."""
    from graphopt import _C

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3, groups=2)).eval()
    x = torch.randn(1, 3, 12, 12)
    graph = graphopt.optimize(graphopt.trace(model, (x,)))
    if int8:
        graph = graphopt.quantize(graph, "static", calibration=[(x,)])
    options = {} if int8 else {"layout": "nchw"}
    start = _C.pack_cache_stats()
    first = graphopt.compile(graph, backend="native", **options)
    want = first(x)
    packed = _C.pack_cache_stats()["packs"] - start["packs"]
    assert packed == 3  # one conv + two groups of the second
    second = graphopt.compile(graph, backend="native", **options)
    torch.testing.assert_close(second(x), want)
    assert _C.pack_cache_stats()["packs"] - start["packs"] == packed
    if not int8:
        torch.testing.assert_close(want, model(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.bool])
def test_onnx_external_initializers_are_read_once(dtype, tmp_path):
    """from_onnx maps external data (copy-on-write views of the data file, as ``to_onnx``
    aligns every tensor), never through the proto and a second copy, for every element type,
    with the same values."""
    from graphopt.filemap import is_file_mapped
    from graphopt.ir.dtypes import DType, torch_to_numpy
    from graphopt.ir.graph import Graph
    from graphopt.ir.types import TensorType

    g = torch.Generator().manual_seed(0)
    if dtype is torch.bool:
        weight = torch.rand(40, 40, generator=g) > 0.5
    elif dtype is torch.int64:
        weight = torch.randint(-1000, 1000, (40, 40), generator=g)
    else:
        weight = torch.randn(40, 40, generator=g).to(dtype)
    graph = Graph("main")
    x = graph.add_input("x", TensorType((40, 40), DType.from_torch(dtype)))
    array, ir_dtype = torch_to_numpy(weight)
    w = graph.add_constant(array, "w", ir_dtype)
    op = "logical_xor" if dtype is torch.bool else "add"
    graph.set_outputs([graph.create_node(op, [x, w]).outputs[0]])
    path = tmp_path / "m.onnx"
    graphopt.to_onnx(graph, path, external_data=True)
    imported = graphopt.from_onnx(path)
    (const,) = [v for v in imported.constants.values() if v.data.shape == (40, 40)]
    np.testing.assert_array_equal(const.data, array)
    assert not const.data.flags.writeable
    if dtype is not torch.bool:  # bool is normalised to 0 / 1 (one pass)
        assert is_file_mapped(const.data)
    feed = weight.clone()
    torch.testing.assert_close(graphopt.run(imported, feed), graphopt.run(graph, feed))
