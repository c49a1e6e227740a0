"""Static int8 PTQ on real trained weights: the digits CNN (tests/conftest.py digits_cnn), its
accuracy through the reference interpreter and onnxruntime, what the rewrite changed, the
accuracy control, the quantize-static pass, and typed errors for bad calibration data."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.export import Dim

import graphopt
from graphopt.errors import QuantizationError

MAX_LOSS = 0.005  # points of accuracy static int8 may lose (2 of 397 test images)


@pytest.fixture(scope="session")
def digits_graph(digits_cnn, digits_data):
    """(optimized float graph with a symbolic batch, its test accuracy, calibration, x, y)."""
    x_train, _, x_test, y_test = digits_data
    graph = graphopt.trace(digits_cnn, (x_test[:4],), dynamic_shapes=({0: Dim("batch")},))
    graph = graphopt.optimize(graph, "default")
    calibration = [(x_train[i: i + 64],) for i in range(0, 512, 64)]  # 8 batches of 64
    return graph, _accuracy(graphopt.run(graph, x_test), y_test), calibration, x_test, y_test


def _accuracy(logits, y) -> float:
    return float((torch.as_tensor(logits).argmax(-1) == y).float().mean())


@pytest.fixture(scope="session")
def quantized(digits_graph):
    """observer -> (quantized graph, report), computed once per session."""
    graph, _, calibration, _, _ = digits_graph
    cache = {}

    def get(observer):
        if observer not in cache:
            cache[observer] = graphopt.quantize(graph, "static", calibration=calibration,
                                                observer=observer, report=True)
        return cache[observer]

    return get


@pytest.mark.parametrize("observer", ["minmax", "entropy", "mse", "percentile"])
def test_static_int8_keeps_accuracy_reference_and_onnxruntime(digits_graph, quantized,
                                                               observer):
    graph, base, _, x_test, y_test = digits_graph
    assert base > 0.95
    q, rep = quantized(observer)
    ref_logits = graphopt.run(q, x_test)
    acc_ref = _accuracy(ref_logits, y_test)
    ort_logits = torch.as_tensor(graphopt.compile(q, backend="onnxruntime")(x_test))
    acc_ort = _accuracy(ort_logits, y_test)
    assert acc_ref >= base - MAX_LOSS and acc_ort >= base - MAX_LOSS, (base, acc_ref, acc_ort)
    # onnxruntime's int8 kernels vs the reference: the same predictions, logits close (both
    # quantize each layer's output to the same u8 grid; a 1-LSB rounding difference is the
    # largest per-layer disagreement, tests/test_quant_int_ops.py)
    assert (ref_logits.argmax(-1) == ort_logits.argmax(-1)).float().mean() >= 0.995
    scale = ref_logits.abs().max()
    assert (ref_logits - ort_logits).abs().max() <= 0.05 * scale
    assert rep.error < 1e-3 and len(rep.quantized) == 4 and rep.mode.startswith("static")



def test_static_int8_runs_natively(digits_graph, quantized):
    """The whole static graph runs in the native runtime (quantize_linear, qconv with the
    fused ReLU, max pooling of u8 codes, qlinear), bit for bit equal to the reference."""
    _, base, _, x_test, y_test = digits_graph
    q, _ = quantized("minmax")
    fn = graphopt.compile(q, backend="native", threads=2)  # no fallback: every node is native
    native = fn(x_test)  # symbolic batch: planned on the first call
    kernels = collections.Counter(s.kernel for s in fn.plan.steps)
    assert kernels["qconv2d"] == 2 and kernels["qlinear"] == 2
    assert kernels["quantize_linear"] == 1 and kernels["pool2d"] == 1
    torch.testing.assert_close(native, graphopt.run(q, x_test), rtol=0, atol=0)
    assert _accuracy(native, y_test) >= base - MAX_LOSS

def test_what_the_rewrite_changed(digits_graph, quantized):
    graph, *_ = digits_graph
    q, rep = quantized("minmax")
    assert graph.op_histogram() == {"fused_conv": 2, "max_pool": 1, "reshape": 2,
                                    "fused_linear": 1, "linear": 1}
    # 2 conv(+BN+ReLU) and 2 linears became integer ops; pool and flatten run on u8 codes;
    # one quantize_linear at the input; no float compute and no Q/DQ pair left
    assert q.op_histogram() == {"quantize_linear": 1, "reshape": 2, "qconv": 2,
                                "max_pool": 1, "qlinear": 2}
    qconvs = [n for n in q.nodes if n.op == "qconv"]
    assert [n.attrs["activation"] for n in qconvs] == ["relu", "relu"]  # ReLU stayed inside
    qlins = [n for n in q.nodes if n.op == "qlinear"]
    assert [n.attrs["activation"] for n in qlins] == ["relu", "none"]
    assert [str(n.outputs[0].dtype) for n in qconvs + qlins] == ["u8", "u8", "u8", "f32"]
    for n in qconvs + qlins:  # weight constants record their quantization
        w = n.inputs[3]
        assert w.dtype.value == "i8" and w.type.quant is not None and w.type.quant.axis == 0
        np.testing.assert_allclose(w.type.quant.scale, n.inputs[4].data, rtol=1e-7)
    assert rep.bytes_after < 0.3 * rep.bytes_before
    assert str(graphopt.parse(str(q), {k: v.data for k, v in q.constants.items()})) == str(q)


def test_onnx_export_runs_int8_kernels(digits_graph, quantized, tmp_path):
    q, _ = quantized("minmax")
    path = tmp_path / "q.onnx"
    model = graphopt.to_onnx(q, path)  # runs onnx.checker(full_check)
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "q.opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath)
                              .graph.node)
    assert ops["QLinearConv"] == 2 and ops["QGemm"] == 1 and ops["MatMulIntegerToFloat"] == 1
    assert "Conv" not in ops and "Gemm" not in ops, ops  # nothing fell back to float


def test_observers_choose_different_ranges(digits_graph, quantized):
    scales = {}
    for observer in ("minmax", "entropy", "mse", "percentile"):
        q, _ = quantized(observer)
        scales[observer] = float(q.constants["fused_conv_scale"].data)
    # minmax keeps every outlier: the widest range of all
    assert scales["minmax"] == max(scales.values())
    assert len(set(scales.values())) >= 3, scales


def test_error_budget_falls_back_and_reports(digits_graph):
    graph, _, calibration, x_test, _ = digits_graph
    q, rep = graphopt.quantize(graph, "static", calibration=calibration[:2], error_budget=1e-6,
                               report=True)
    assert rep.fallback and rep.error <= 1e-6 or not rep.quantized
    assert all(r.sensitivity is not None for r in rep.layers)
    assert "fell back" in str(rep) and "float" in str(rep)
    hist = q.op_histogram()
    assert hist.get("qconv", 0) + hist.get("qlinear", 0) == len(rep.quantized)
    fallback_convs = sum(1 for r in rep.layers if not r.quantized and "conv" in r.node)
    assert hist.get("fused_conv", 0) == fallback_convs  # float units are fused again
    torch.testing.assert_close(graphopt.run(q, x_test[:8]), graphopt.run(graph, x_test[:8]),
                               rtol=0.05, atol=0.05 * float(graphopt.run(graph, x_test[:8])
                                                            .abs().max()))


def test_exclude_keeps_layers_float(digits_graph):
    graph, _, calibration, x_test, _ = digits_graph
    q, rep = graphopt.quantize(graph, "static", calibration=calibration[:1],
                               exclude=("11.weight",), report=True)
    assert rep.fallback == ["linear_1"] and "excluded" in str(rep)
    assert q.op_histogram()["linear"] == 1 and q.op_histogram()["qlinear"] == 1


def test_quantize_static_pass_from_npz(digits_graph, quantized, tmp_path):
    graph, _, calibration, x_test, _ = digits_graph
    path = tmp_path / "calib.npz"
    np.savez(path, input=np.stack([c[0].numpy() for c in calibration]))
    out = graphopt.optimize(graph, f'quantize-static{{calibration="{path}"}}', verify=True)
    q, _ = quantized("minmax")
    assert out.op_histogram() == q.op_histogram()
    torch.testing.assert_close(graphopt.run(out, x_test), graphopt.run(q, x_test))
    from graphopt.errors import PassError

    with pytest.raises(PassError, match="needs calibration=FILE.npz"):
        graphopt.optimize(graph, "quantize-static")


def test_bad_calibration_data_is_a_typed_error(digits_graph):
    graph, _, calibration, x_test, _ = digits_graph
    x = calibration[0][0]
    cases = [
        ([(x, x)], "takes 1 tensor input"),                      # wrong arity
        ([(x[:, :10],)], "does not fit the graph: input %input expects f32"),  # wrong shape
        ([(x.double(),)], "expects dtype f32"),                  # wrong dtype
        ([], "calibration data is empty"),
        ([42], "calibration item 0 is a int"),
        ([(x * float("nan"),)], "non-finite"),
    ]
    for data, message in cases:
        with pytest.raises(QuantizationError, match=message):
            graphopt.quantize(graph, "static", calibration=data)
    with pytest.raises(QuantizationError, match="unknown observer 'kl'; known: minmax"):
        graphopt.quantize(graph, "static", calibration=calibration, observer="kl")
    with pytest.raises(QuantizationError, match="percentile must be in"):
        graphopt.quantize(graph, "static", calibration=calibration, observer="percentile",
                          observer_options={"percentile": 20})


def test_calibration_accepts_a_generator_and_bare_tensors(digits_graph, quantized, capsys):
    graph, _, calibration, x_test, _ = digits_graph
    q = graphopt.quantize(graph, "static", calibration=(c[0] for c in calibration),
                          progress=True)
    torch.testing.assert_close(graphopt.run(q, x_test), graphopt.run(quantized("minmax")[0],
                                                                     x_test))
    assert "calibrate" in capsys.readouterr().err  # the tqdm bar


def test_an_unoptimized_graph_is_optimized_before_quantizing(digits_cnn, digits_data, quantized):
    """Issue #24: quantize on a freshly traced graph used to leave every batch norm between its
    quantize / dequantize pairs (int8 slower than fp32). It now plans on the optimized graph:
    the same int8 graph as quantizing the optimized one."""
    x_train, _, x_test, _ = digits_data
    traced = graphopt.trace(digits_cnn, (x_test[:4],), dynamic_shapes=({0: Dim("batch")},))
    assert "batch_norm" in traced.op_histogram()
    calibration = [(x_train[i: i + 64],) for i in range(0, 512, 64)]
    q = graphopt.quantize(traced, "static", calibration=calibration)
    ops = q.op_histogram()
    assert "batch_norm" not in ops and ops.get("qconv", 0) == 2
    assert str(q) == str(quantized("minmax")[0])
