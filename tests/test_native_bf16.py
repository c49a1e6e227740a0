"""precision="bf16" on the native runtime: weight GEMMs in bf16 with fp32 sums (csrc/rt_bf16.h).

A bf16 product is checked against the same graph run by the reference interpreter on operands
rounded to bf16 beforehand (the products of bf16 values are exact in fp32, so only the order of
the fp32 additions differs), and it must differ from the fp32 result (the rounding happened).
The AMX kernels run here when the CPU has them; the fp32-emulation path reruns this file with
GRAPHOPT_DISABLE_AMX=1 (and GRAPHOPT_DISABLE_AVX512=1) in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from native_util import Const, op_graph, randn

import graphopt
from graphopt import _C
from graphopt.errors import ArtifactError, GraphoptError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType


def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def _compile(g, precision="bf16", threads=2, **kw):
    return graphopt.compile(g, backend="native", threads=threads, fallback="error",
                            precision=precision, **kw)


def _check_bf16(op: str, args: list, attrs: dict | None = None, threads=(1, 2)):
    """Native bf16 == reference on rounded operands (1e-5 relative); != the fp32 result."""
    g, feeds = op_graph(op, args, attrs)
    rounded = [Const(bf16(a.data)) if isinstance(a, Const) and i == 1 else a
               for i, a in enumerate(args)]
    g_ref, _ = op_graph(op, rounded, attrs)
    x_index = 0
    ref_feeds = [bf16(f) if i == x_index else f for i, f in enumerate(feeds)]
    want = graphopt.run(g_ref, *ref_feeds)
    exact = graphopt.run(g, *feeds)
    for t in threads:
        got = _compile(g, threads=t)(*feeds)
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)
        assert float((got - exact).abs().max()) > 1e-5 * scale  # rounded to bf16, not fp32
    return g, feeds


def test_kernel_is_reported():
    features = _C.cpu_features()
    assert features["bf16_gemm_kernel"] in ("amx", "fp32")
    assert features["use_amx"] == (features["bf16_gemm_kernel"] == "amx")


@pytest.mark.parametrize("m,k,n", [(1, 768, 96), (5, 100, 37), (16, 32, 16), (33, 64, 48),
                                   (37, 70, 50), (64, 96, 80), (130, 200, 33)])
def test_linear_shapes(m, k, n):
    """Edges of every kind: rows and columns past a 32 x 32 block, K past a 32-step."""
    _check_bf16("linear", [randn(m, k), Const(randn(n, k) / k ** 0.5), Const(randn(n))])


@pytest.mark.parametrize("act,params", [("relu", ()), ("gelu", ()), ("clamp", (-0.5, 0.5))])
def test_fused_linear_epilogue_and_residual(act, params):
    x, w, b, res = randn(40, 72), randn(56, 72) / 8, randn(56), randn(40, 56)
    _check_bf16("fused_linear", [x, Const(w), Const(b), res],
                {"activation": act, "activation_params": params})


def test_inplace_residual_accumulates_on_tiles():
    """A residual that dies at the node becomes the output buffer: tiles start from it."""
    g = graphopt.Graph("inplace")
    x = g.add_input("x", TensorType((35, 64), DType.float32))
    r = g.add_input("r", TensorType((35, 48), DType.float32))
    w = g.add_constant(np.asarray(randn(48, 64) / 8), "w")
    doubled = g.create_node("add", [r, r]).outputs[0]
    node = g.create_node("fused_linear", [x, w, None, doubled], {"activation": "none",
                                                                 "activation_params": ()})
    g.set_outputs(node.outputs)
    xs, rs = randn(35, 64), randn(35, 48)
    fn = _compile(g)
    step = next(s for s in fn.plan.steps if s.kernel == "gemm")
    assert step.ints[-2] == 1 and step.ints[-1] == 1  # in place, bf16
    want = bf16(xs) @ bf16(torch.as_tensor(g.constants["w"].data)).T + 2 * rs
    torch.testing.assert_close(fn(xs, rs), want, rtol=1e-5, atol=1e-5)


class _TransposedMatmul(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(randn(24, 36) / 5)

    def forward(self, x):
        return x.transpose(-1, -2) @ self.w  # A read through strides (column stride != 1)


def test_transposed_input_and_batched_matmul_by_weight():
    _check_bf16("matmul", [randn(2, 3, 17, 24), Const(randn(24, 36) / 5)])
    model, x = _TransposedMatmul(), randn(2, 24, 19)
    fn = _compile(graphopt.trace(model, (x,)))
    assert [s.ints[-1] for s in fn.plan.steps if s.kernel == "gemm"] == [1]
    want = bf16(x).transpose(-1, -2) @ bf16(model.w.detach())
    torch.testing.assert_close(fn(x), want, rtol=1e-5, atol=1e-5)


def test_products_of_activations_stay_fp32():
    """Only GEMMs against constant weights round: x @ y of two inputs is the fp32 kernel."""
    g, feeds = op_graph("matmul", [randn(20, 30), randn(30, 10)])
    fn = _compile(g)
    assert [s.ints[-1] for s in fn.plan.steps if s.kernel == "gemm"] == [0]
    torch.testing.assert_close(fn(*feeds), graphopt.run(g, *feeds), rtol=1e-5, atol=1e-6)


def test_fp32_default_and_bad_precision():
    g, feeds = op_graph("linear", [randn(8, 16), Const(randn(4, 16)), None])
    fn = _compile(g, precision="fp32")
    assert [s.ints[-1] for s in fn.plan.steps if s.kernel == "gemm"] == [0]
    with pytest.raises(GraphoptError, match="precision must be one of"):
        _compile(g, precision="fp16")


def test_bert_small_bf16_cosine(traced_bert_small):
    """A real architecture: per-token cosine of the bf16 model's hidden states vs eager fp32."""
    model, args, graph = traced_bert_small
    fn = _compile(graphopt.optimize(graph))
    with torch.no_grad():
        want = model(*args)
    got = fn(*args)
    want0 = want[0] if isinstance(want, (tuple, list)) else next(iter(want.values()))
    got0 = got[0] if isinstance(got, (tuple, list)) else next(iter(got.values()))
    assert float(want0.abs().max()) > 1e-2  # not degenerate
    cos = torch.nn.functional.cosine_similarity(got0.flatten(0, -2), want0.flatten(0, -2), -1)
    assert float(cos.mean()) >= 0.999 and float(cos.min()) >= 0.995, cos
    assert float((got0 - want0).abs().max()) > 1e-5  # bf16, not fp32


def test_artifact_keeps_precision(tmp_path):
    g, feeds = op_graph("linear", [randn(8, 64), Const(randn(32, 64)), None])
    fn = _compile(g)
    path = tmp_path / "m.npz"
    fn.save(path)
    loaded = graphopt.native.load(path)
    assert loaded.precision == "bf16"
    torch.testing.assert_close(loaded(*feeds), fn(*feeds), rtol=0, atol=0)
    # An artifact written before the field existed loads as fp32; a bad value is refused.
    for value, error in ((None, None), ("int4", "precision 'int4' is not one of")):
        with zipfile.ZipFile(path) as z:
            entries = {n: z.read(n) for n in z.namelist()}
        meta_path = tmp_path / "meta.npy"
        meta_path.write_bytes(entries["__meta__.npy"])
        meta = json.loads(str(np.load(meta_path)))
        if value is None:
            meta.pop("precision")
        else:
            meta["precision"] = value
        np.save(meta_path, np.array(json.dumps(meta)))
        entries["__meta__.npy"] = meta_path.read_bytes()
        edited = tmp_path / f"edited_{value}.npz"
        with zipfile.ZipFile(edited, "w") as z:
            for n, data in entries.items():
                z.writestr(n, data)
        if error is None:
            assert graphopt.native.load(edited).precision == "fp32"
        else:
            with pytest.raises(ArtifactError, match=error):
                graphopt.native.load(edited)


def _set(name: str) -> bool:
    return os.environ.get(name) not in (None, "", "0")


@pytest.mark.parametrize("env", ["GRAPHOPT_DISABLE_AMX", "GRAPHOPT_DISABLE_AVX512"])
def test_other_paths(env):
    """Each switch leaves AMX unused, and the whole file passes on the fp32-emulation path
    (rerun in a subprocess unless this run already is on it)."""
    environ = dict(os.environ, **{env: "1"})
    code = "from graphopt import _C; print(_C.cpu_features()['bf16_gemm_kernel'])"
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "fp32"
    if _C.cpu_features()["bf16_gemm_kernel"] == "fp32":
        return  # this run is already on it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
         "-k", "not other_paths"],
        env=environ, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "gqa"])
def test_attention_bf16(case):
    """precision="bf16" also runs attention's two products in bf16 (AMX tiles; the softmax
    stays f32); where AMX is absent attention stays f32. Odd sizes: rows, keys and head dims
    past the 16 / 32 tile edges."""
    b, h, l_, s_, e, ev = 2, 4, 70, 90, 40, 24
    q, k, v = randn(b, h, l_, e), randn(b, h if case != "gqa" else 2, s_, e, seed=1), \
        randn(b, h if case != "gqa" else 2, s_, ev, seed=2)
    mask = None
    if case == "bool_mask":
        mask = torch.rand(b, 1, l_, s_, generator=torch.Generator().manual_seed(3)) > 0.3
    elif case == "float_mask":
        mask = randn(b, 1, l_, s_, seed=4)
    attrs = {"scale": None, "is_causal": case == "causal", "enable_gqa": case == "gqa"}
    g, feeds = op_graph("attention", [q, k, v, mask], attrs)
    want = graphopt.run(g, *feeds)
    fn = _compile(g)
    # the bf16 flag: before S2 and the second key/value piece's six strides
    assert [s.ints[-8] for s in fn.plan.steps if s.kernel == "attention"] == [1]
    got = fn(*feeds)
    scale = float(want.abs().max())
    if _C.cpu_features()["use_amx"]:
        torch.testing.assert_close(got, want, rtol=0, atol=3e-2 * scale)
        assert float((got - want).abs().max()) > 1e-6 * scale  # computed in bf16
        cos = torch.nn.functional.cosine_similarity(got.flatten(0, -2), want.flatten(0, -2), -1)
        assert float(cos.min()) > 0.999
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
