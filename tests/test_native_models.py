"""End to end: graphopt.compile(graphopt.optimize(trace(model)), backend="native") vs eager.

Tolerances: rtol 1e-4 / atol 1e-5 for the MLP, the transformers, convzoo and tensorops.
ResNet-50 and MobileNetV2 use atol = 3e-4 * max|eager| (rtol 1e-4): 50+ convolutions in
float32 accumulate rounding, and the optimized graph itself (batch norm folded into the
convolution weights) already differs from eager by ~1e-4 * max|eager| when run by the
reference interpreter (torch's own kernels), so the native result is held to that scale; the
test also checks that native stays within 3x of the interpreter's own deviation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from native_util import assert_same, randn

import graphopt
import graphopt.native
from graphopt import zoo
from graphopt.errors import InputMismatchError, LoweringError
from graphopt.native import NativeUnsupportedError, check_plan


def _leaves(x):
    import torch.utils._pytree as pytree

    return [t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def _compile_model(name, **options):
    model, args = zoo.get(name, **options)
    g = graphopt.optimize(graphopt.trace(model, args), "default")
    fn = graphopt.compile(g, backend="native")
    with torch.no_grad():
        expected = model(*args)
    return model, args, g, fn, expected


@pytest.mark.parametrize("name,options", [
    ("mlp", {}), ("bert", {"layers": 2}), ("gpt2", {"layers": 2}), ("convzoo", {}),
    ("tensorops", {})])
def test_model_matches_eager(name, options):
    _, args, _, fn, expected = _compile_model(name, **options)
    actual = fn(*args)
    assert type(actual) is type(expected)
    for a, e in zip(_leaves(actual), _leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    check_plan(fn.plan.lifetimes, fn.plan.memory)
    assert fn.plan.num_segments == 1 and not fn.plan.fallback_nodes


@pytest.mark.parametrize("fixture", ["traced_resnet50", "traced_mobilenetv2"])
def test_cnn_matches_eager(fixture, request):
    """Full-depth ResNet-50 / MobileNetV2 at 64x64 (the session fixtures of conftest.py; the
    op structure does not depend on the image size)."""
    model, args, traced = request.getfixturevalue(fixture)
    g = graphopt.optimize(traced, "default")
    fn = graphopt.compile(g, backend="native")
    with torch.no_grad():
        expected = model(*args)
    reference = graphopt.run(g, *args)
    for a, e, r in zip(_leaves(fn(*args)), _leaves(expected), _leaves(reference), strict=True):
        scale = float(e.abs().max())
        torch.testing.assert_close(a, e, rtol=1e-4, atol=3e-4 * scale)
        interp_err = float((r - e).abs().max())
        assert float((a - e).abs().max()) <= 3 * interp_err + 1e-5 * scale
    assert fn.plan.num_segments == 1
    check_plan(fn.plan.lifetimes, fn.plan.memory)


def test_gpt2_causal_attention_plan_has_no_permute_copies():
    *_, fn, _ = _compile_model("gpt2", layers=2, seq=64)
    kernels = [s.kernel for s in fn.plan.steps]
    assert "copy" not in kernels, kernels  # head split/merge are views or written in place
    assert kernels.count("attention") == 2


# ------------------------------------------------------------------- unsupported / fallback
class _RuntimeIndex(torch.nn.Module):
    """Advanced indexing by two runtime index tensors: the one index form without a native
    kernel (the lowering needs constant indices for several index tensors)."""

    def forward(self, x, i, j):
        return torch.relu((x * 2.0)[i, j]) + 1.0


def _runtime_index_case():
    x, i, j = randn(3, 5), torch.tensor([0, 2]), torch.tensor([1, 4])
    return graphopt.trace(_RuntimeIndex(), (x, i, j)), (x, i, j)


def test_unsupported_node_with_fallback_error_names_op_and_node():
    g, _ = _runtime_index_case()
    with pytest.raises(NativeUnsupportedError) as info:
        graphopt.compile(g, backend="native", fallback="error")
    err = info.value
    assert isinstance(err, LoweringError) and isinstance(err, graphopt.GraphoptError)
    assert [f[0] for f in err.failures] == ["index"]
    assert "%index" in str(err) and "non-constant index tensors" in str(err)
    assert 'fallback="reference"' in str(err)
    with pytest.raises(NativeUnsupportedError):  # None: the pre-0.2 spelling of "error"
        graphopt.compile(g, backend="native", fallback=None)


def test_reference_fallback_is_the_default_and_warns_once_naming_the_op():
    g, args = _runtime_index_case()
    with pytest.warns(graphopt.native.NativeFallbackWarning, match=r"op\(s\) index;") as record:
        fn = graphopt.compile(g, backend="native")
    assert len(record) == 1 and record[0].filename == __file__  # points at the caller
    assert_same(fn(*args), _RuntimeIndex()(*args))
    plan = fn.plan
    assert len(plan.fallback_nodes) == 1 and "index" in plan.fallback_nodes[0]
    assert plan.num_segments == 3  # native (mul), reference (index), native (relu, add)
    check_plan(plan.lifetimes, plan.memory)
    with pytest.raises(graphopt.GraphoptError, match="fallback must be one of"):
        graphopt.compile(g, backend="native", fallback="numpy")


def test_fallback_warning_for_symbolic_shapes_comes_once():
    import warnings

    x, i, j = randn(3, 5), torch.tensor([0, 2]), torch.tensor([1, 4])
    n = torch.export.Dim("n", min=2, max=8)
    g = graphopt.trace(_RuntimeIndex(), (x, i, j), dynamic_shapes=(None, {0: n}, {0: n}))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn = graphopt.compile(g, backend="native")
        for size in (2, 3, 2):
            idx = torch.arange(size) % 3
            assert_same(fn(x, idx, idx), _RuntimeIndex()(x, idx, idx))
    assert [type(r.message) for r in record] == [graphopt.native.NativeFallbackWarning]


# ---------------------------------------------------------------------------- call contract
def test_inputs_numpy_noncontiguous_and_errors():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()).eval()
    x = randn(5, 6)
    fn = graphopt.compile(graphopt.trace(model, (x,)), backend="native")
    with torch.no_grad():
        expected = model(x)
    assert_same(fn(x.numpy()), expected)
    xt = x.t().contiguous().t()  # same values, transposed strides
    assert_same(fn(xt), expected)
    with pytest.raises(InputMismatchError):
        fn(x.double())
    with pytest.raises(InputMismatchError):
        fn(randn(5, 7))


def test_dict_inputs_and_outputs():
    model, args = zoo.get("tensorops")
    g = graphopt.trace(model, args)
    fn = graphopt.compile(g, backend="native")
    out = fn(ids=args[0], mask=args[1])
    assert set(out) == {"hidden", "stats", "extra", "picked"}
    for k, v in model(*args).items():
        torch.testing.assert_close(out[k], v, rtol=1e-4, atol=1e-5)


def test_dynamic_shapes_plan_per_shape():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    x = randn(4, 8)
    batch = torch.export.Dim("batch", min=2, max=64)
    g = graphopt.trace(model, (x,), dynamic_shapes=({0: batch},))
    assert not g.inputs[0].type.is_static
    fn = graphopt.compile(g, backend="native")
    assert fn.plan is None
    for n in (4, 9, 4):
        xn = randn(n, 8)
        with torch.no_grad():
            assert_same(fn(xn), model(xn))
    assert len(fn._plans) == 2


def test_threads_do_not_change_results():
    _, args, g, _, _ = _compile_model("bert", layers=1, seq=24)
    one = graphopt.compile(g, backend="native", threads=1)(*args)
    two = graphopt.compile(g, backend="native", threads=2)(*args)
    for a, b in zip(_leaves(one), _leaves(two)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_bench_harness_native_backend():
    model, args = zoo.get("mlp", width=64, depth=2)
    report = graphopt.benchmark(model, args, backends=["eager", "graphopt-native"], rounds=3,
                                warmup=1, min_sample_s=0.0, progress=False)
    native = next(r for r in report.results if r.backend == "graphopt-native")
    assert native.ok, native.reason
    assert native.numerics_ok


def test_profile_lists_every_step():
    model, args = zoo.get("mlp", width=32, depth=3)
    fn = graphopt.compile(graphopt.optimize(graphopt.trace(model, args)), backend="native")
    prof = fn.profile(*args)
    assert [k for _, k, _ in prof] == ["gemm"] * 3
    assert all(s >= 0 for _, _, s in prof)
    assert np.isfinite(sum(s for _, _, s in prof))


def test_save_and_load_round_trip(tmp_path):
    _, args, _, fn, expected = _compile_model("tensorops")
    path = tmp_path / "model.bin"
    fn.save(path)
    loaded = graphopt.native.load(path)
    flat_expected = _leaves(expected)
    for a, e in zip(_leaves(loaded(*args)), flat_expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
