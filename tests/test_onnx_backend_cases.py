"""Coverage floor on the ONNX backend node tests (~1,900 op-level models with expected outputs).

``benchmarks/onnx_backend_coverage.py`` imports each case with ``from_onnx``, runs it with
``graphopt.run`` and, for those that pass, lowers it back with ``to_onnx`` and runs onnxruntime.
The floors below only ever rise: set them a little under what the benchmark reports when an
importer or lowering lands.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

# Shares of all cases (imported and producing the expected outputs).
RUN_FLOOR = 0.81  # from_onnx -> graphopt.run (81.6% when set)
ORT_FLOOR = 0.71  # ... -> to_onnx -> onnxruntime (72.1% when set)
# Of the cases onnxruntime itself passes, the share from_onnx -> compile(native,
# fallback="error") passes (issue #21 asks for 95%).
NATIVE_FLOOR = 0.95  # (95.2% when set: the #21 must-show)

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "onnx_backend_coverage.py"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("onnx_backend_coverage", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(coverage):
    return coverage.run_all(coverage.load_cases(), with_ort=True, with_native=True)


def test_share_of_backend_cases_run_correctly_never_drops(results):
    ran = sum(r.ran for r in results) / len(results)
    assert ran >= RUN_FLOOR, f"{ran:.1%} of ONNX backend cases pass (floor {RUN_FLOOR:.0%})"


def test_share_of_backend_cases_through_onnxruntime_never_drops(results):
    ort = sum(r.ort for r in results) / len(results)
    assert ort >= ORT_FLOOR, f"{ort:.1%} pass through to_onnx + onnxruntime (floor {ORT_FLOOR:.0%})"


def test_native_share_of_onnxruntime_passes_never_drops(results):
    ort_passes = [r for r in results if r.ort_direct]
    share = sum(r.native for r in ort_passes) / len(ort_passes)
    assert share >= NATIVE_FLOOR, (
        f"native passes {share:.1%} of the cases onnxruntime passes (floor {NATIVE_FLOOR:.0%})")


def test_native_never_disagrees_with_the_reference(results):
    """A case the reference runs correctly fails natively only by a typed 'cannot lower'."""
    wrong = [f"{r.name}: {r.native_error.splitlines()[0]}" for r in results
             if r.ran and not r.native and not r.native_error.startswith(
                 ("NativeUnsupportedError", "LoweringError"))]
    assert wrong == []


def test_no_case_crashes_the_importer(results):
    """Failures must be typed errors (or numeric mismatches), never crashes."""
    crashes = [f"{r.name}: {r.error.splitlines()[0]}" for r in results
               if r.error.startswith("CRASH")]
    crashes += [f"{r.name}: {r.ort_error.splitlines()[0]}" for r in results
                if r.ort_error.startswith("CRASH")]
    crashes += [f"{r.name}: {r.native_error.splitlines()[0]}" for r in results
                if r.native_error.startswith("CRASH")]
    assert crashes == []


def test_core_cnn_and_transformer_ops_all_pass(results):
    """Cases of the ops real CNN/transformer exports consist of must all pass."""
    core = ("test_conv_", "test_matmul_", "test_gemm_", "test_relu", "test_softmax_",
            "test_layer_normalization_", "test_batchnorm_example", "test_transpose_",
            "test_reshape_", "test_gather_0", "test_gather_1", "test_concat_", "test_add",
            "test_unsqueeze_", "test_squeeze", "test_maxpool_2d_", "test_averagepool_2d_",
            "test_globalaveragepool", "test_erf", "test_tanh", "test_sigmoid", "test_where_")
    # (minus element types the IR has no dtype for)
    exempt = ("uint16", "uint32", "uint64", "bfloat16", "float8", "int4", "string")
    failing = [r.name for r in results if r.name.startswith(core) and not r.ran
               and not any(e in r.name for e in exempt)]
    assert failing == []
