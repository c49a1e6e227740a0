"""How much of the ONNX backend node test suite graphopt imports, runs and re-exports.

Each of the ~1,900 op-level cases of ``onnx.backend.test.case.node`` is a one-op (or expanded
function) model with inputs and expected outputs. For each case this script:

1. imports it with ``graphopt.from_onnx``; when the IR needs an input's value at import time
   (the ``shape`` of a Reshape fed by a graph input), it retries with that input frozen to the
   case's data (``constant_inputs=``) and counts the case as "frozen";
2. runs it with the reference interpreter (``graphopt.run``) and compares with the expected
   outputs (the case's rtol/atol);
3. lowers the imported graph back with ``graphopt.to_onnx`` and runs it in onnxruntime;
4. compiles the imported graph with the native runtime (``backend="native"``,
   ``fallback="error"``: a node without a native kernel fails the case) and runs it;
5. runs the case's own ONNX model in onnxruntime directly: the yardstick for the native leg
   (issue #21: native passes >= 95% of what onnxruntime passes).

``--json PATH`` writes the per-leg counts and every failing case with its reason, the report
committed as ``benchmarks/results/published/onnx_node_coverage.json``.

Usage::

    python benchmarks/onnx_backend_coverage.py [--filter SUBSTR] [--no-ort] [--failures N]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import re
import sys
import time
import warnings
from contextlib import redirect_stderr

import numpy as np
import onnx
import torch

import graphopt
from graphopt.errors import GraphoptError, OnnxImportError


@dataclasses.dataclass
class CaseResult:
    name: str
    imported: bool = False
    frozen: bool = False
    ran: bool = False  # graphopt.run matched the expected outputs
    ort: bool = False  # to_onnx -> onnxruntime matched the expected outputs
    native: bool = False  # compile(backend="native") matched the expected outputs
    ort_direct: bool = False  # the case's own model in onnxruntime matched
    error: str = ""
    ort_error: str = ""
    native_error: str = ""
    ort_direct_error: str = ""


def load_cases():
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return node_cases.collect_testcases(None)


def to_torch(array, dtype=None) -> torch.Tensor:
    """A case's input as a torch tensor (0-d stays 0-d; object arrays take the IR dtype)."""
    if isinstance(array, onnx.TensorProto):
        array = onnx.numpy_helper.to_array(array)
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16).copy()).view(torch.bfloat16)
    if array.dtype == object and dtype is not None:
        if dtype.torch == torch.bfloat16:
            return torch.tensor(array.astype(np.float32)).to(torch.bfloat16)
        array = array.astype(dtype.numpy)
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def _as_float_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.bfloat16:
            return x.float().numpy()
        return x.numpy()
    if isinstance(x, onnx.TensorProto):
        x = onnx.numpy_helper.to_array(x)
    x = np.asarray(x)
    if x.dtype.name == "bfloat16":
        return x.astype(np.float32)
    return x


def outputs_match(actual, expected, rtol: float, atol: float) -> str:
    """'' when equal within tolerance, else the reason."""
    if len(actual) != len(expected):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        a, e = _as_float_numpy(a), _as_float_numpy(e)
        if a.shape != e.shape:
            return f"output {i} shape {a.shape}, expected {e.shape}"
        if a.dtype != e.dtype and not (a.dtype.kind == e.dtype.kind == "f"):
            return f"output {i} dtype {a.dtype}, expected {e.dtype}"
        if e.dtype.kind in "fc":
            if not np.allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol,
                               equal_nan=True):
                err = np.nanmax(np.abs(a.astype(np.float64) - e.astype(np.float64))) \
                    if a.size else 0
                return f"output {i} differs (max abs err {err:.3g})"
        elif not np.array_equal(a, e):
            return f"output {i} differs"
    return ""


def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def run_case(case, with_ort: bool = True, with_native: bool = False) -> CaseResult:
    result = CaseResult(case.name)
    model = case.model
    inputs, expected = case.data_sets[0]
    inits = {t.name for t in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in inits]
    feeds = dict(zip(input_names, inputs))
    rtol, atol = max(case.rtol, 1e-4), max(case.atol, 1e-6)
    try:
        frozen: dict = {}
        for _ in range(len(input_names) + 1):
            try:
                graph = graphopt.from_onnx(model, constant_inputs=dict(frozen))
                break
            except OnnxImportError as exc:
                new = [n for n in exc.needs_static if n not in frozen]
                if not new:
                    raise
                frozen.update({n: to_torch(feeds[n], _onnx_dtype(model, n)) for n in new})
                result.frozen = True
        result.imported = True
        args = [to_torch(feeds[n], v.dtype)
                for n, v in zip(_input_names(graph, input_names), graph.inputs)]
        out = _flat(graphopt.run(graph, *args))
        reason = outputs_match(out, expected, rtol, atol)
        if reason:
            result.error = "mismatch: " + reason
        else:
            result.ran = True
    except GraphoptError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    except Exception as exc:  # noqa: BLE001  (a crash is a finding, not the end of the run)
        result.error = f"CRASH {type(exc).__name__}: {exc}"
        return result
    if with_ort and result.ran:
        result.ort_error = _run_ort(graph, args, expected, rtol, atol)
        result.ort = not result.ort_error
    if with_native and result.ran:
        result.native_error = _run_native(graph, args, expected, rtol, atol)
        result.native = not result.native_error
    return result


def _run_native(graph, args, expected, rtol, atol) -> str:
    try:
        fn = graphopt.compile(graph, backend="native", threads=1, fallback="error")
        out = _flat(fn(*args))
    except GraphoptError as exc:
        failures = getattr(exc, "failures", None)
        if failures:  # LoweringError: name each op and why (the bucket of the report)
            first = sorted({f"{op}: {re.sub(r'[0-9]+', 'N', why)[:100]}"
                            for op, _, why in failures})
            return f"{type(exc).__name__}: " + "; ".join(first)
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001
        return f"CRASH native {type(exc).__name__}: {exc}"
    reason = outputs_match(out, expected, rtol, atol)
    return f"native mismatch: {reason}" if reason else ""


def run_ort_direct(case) -> str:
    """'' when onnxruntime runs the case's own model to its expected outputs."""
    model = case.model
    inputs, expected = case.data_sets[0]
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    try:
        session = _ort_session(model)
        feeds = {n: (onnx.numpy_helper.to_array(a) if isinstance(a, onnx.TensorProto) else a)
                 for n, a in zip(names, inputs)}
        out = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime: {str(exc).splitlines()[0][:200]}"
    try:
        reason = outputs_match(out, expected, max(case.rtol, 1e-4), max(case.atol, 1e-6))
    except (ValueError, TypeError) as exc:  # sequence / optional outputs
        reason = f"outputs not comparable ({exc})"
    return f"onnxruntime mismatch: {reason}" if reason else ""


def _onnx_dtype(model, name):
    from graphopt.onnx._common import FROM_ONNX_DTYPE

    for i in model.graph.input:
        if i.name == name:
            return FROM_ONNX_DTYPE.get(i.type.tensor_type.elem_type)
    return None


def _input_names(graph, onnx_names):
    """ONNX names of the graph's inputs, in graph order (frozen ones are constants now)."""
    by_clean = {re.sub(r"[^A-Za-z0-9_.]", "_", n): n for n in onnx_names}
    return [by_clean.get(v.name, v.name) for v in graph.inputs]


def _ort_session(model):
    """A quiet one-thread onnxruntime CPU session of an ONNX model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run_ort(graph, args, expected, rtol, atol) -> str:
    try:
        model = graphopt.to_onnx(graph)
    except GraphoptError as exc:
        return f"lowering: {exc}"
    except Exception as exc:  # noqa: BLE001
        return f"CRASH lowering {type(exc).__name__}: {exc}"
    try:
        session = _ort_session(model)
        feeds = {i.name: a.numpy() for i, a in zip(model.graph.input, args)}
        out = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime: {str(exc).splitlines()[0][:200]}"
    reason = outputs_match(out, expected, rtol, atol)
    return f"onnxruntime mismatch: {reason}" if reason else ""


def summarize_error(text: str) -> str:
    """A short bucket label for an error message."""
    first = text.splitlines()[0]
    m = re.search(r"ops graphopt cannot import \(([^)]*)\)", text)
    if m:
        return "unsupported op: " + m.group(1)
    m = re.search(r"element type (\w+)", first)
    if m:
        return "unsupported dtype " + m.group(1)
    first = re.sub(r"'[^']*'", "'…'", first)
    first = re.sub(r"\d+", "N", first)
    return first[:120]


def run_all(cases, with_ort: bool = True, progress: bool = False,
            with_native: bool = False) -> list[CaseResult]:
    results = []
    for i, case in enumerate(cases):
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            result = run_case(case, with_ort, with_native)
            if with_native:
                result.ort_direct_error = run_ort_direct(case)
                result.ort_direct = not result.ort_direct_error
            results.append(result)
        if progress and (i + 1) % 200 == 0:
            print(f"  {i + 1}/{len(cases)}", file=sys.stderr)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--no-ort", action="store_true", help="skip the onnxruntime leg")
    parser.add_argument("--failures", type=int, default=25, help="failure buckets to list")
    parser.add_argument("--list", action="store_true", help="list every failing case")
    parser.add_argument("--native", action="store_true",
                        help="add the native leg and onnxruntime on the case models directly")
    parser.add_argument("--json", default="", help="write the report (implies --native)")
    args = parser.parse_args(argv)
    args.native = args.native or bool(args.json)
    torch.set_num_threads(1)
    cases = [c for c in load_cases() if args.filter in c.name]
    start = time.perf_counter()
    results = run_all(cases, with_ort=not args.no_ort, progress=True, with_native=args.native)
    elapsed = time.perf_counter() - start
    n = len(results)
    imported = sum(r.imported for r in results)
    ran = sum(r.ran for r in results)
    frozen = sum(r.ran and r.frozen for r in results)
    ort_ok = sum(r.ort for r in results)
    print(f"ONNX backend node cases: {n} ({elapsed:.0f} s)")
    print(f"  imported:                          {imported:5d}  {imported / n:6.1%}")
    print(f"  from_onnx -> graphopt.run correct: {ran:5d}  {ran / n:6.1%}  "
          f"({frozen} with shape inputs frozen)")
    if not args.no_ort:
        print(f"  ... -> to_onnx -> onnxruntime ok:  {ort_ok:5d}  {ort_ok / n:6.1%}")
    buckets = collections.Counter(summarize_error(r.error) for r in results if not r.ran)
    print(f"\nTop failure reasons (of {n - ran}):")
    for reason, count in buckets.most_common(args.failures):
        print(f"  {count:4d}  {reason}")
    if not args.no_ort:
        ort_buckets = collections.Counter(summarize_error(r.ort_error) for r in results
                                          if r.ran and not r.ort)
        print(f"\nonnxruntime leg failures (of {ran - ort_ok}):")
        for reason, count in ort_buckets.most_common(args.failures):
            print(f"  {count:4d}  {reason}")
    if args.native:
        _print_native(results, args.failures)
    if args.json:
        write_report(results, args.json, elapsed)
    if args.list:
        for r in results:
            if not r.ran:
                print(f"FAIL {r.name}: {r.error.splitlines()[0] if r.error else ''}")
            elif not args.no_ort and not r.ort:
                print(f"ORT  {r.name}: {r.ort_error.splitlines()[0]}")
            if args.native and r.ran and not r.native:
                print(f"NAT  {r.name}: {r.native_error.splitlines()[0]}")
    return 0


def native_summary(results) -> dict:
    """The native leg against onnxruntime on the same cases (the issue #21 yardstick)."""
    ort_pass = [r for r in results if r.ort_direct]
    return {
        "cases": len(results),
        "onnxruntime_direct": len(ort_pass),
        "graphopt_run": sum(r.ran for r in results),
        "native": sum(r.native for r in results),
        "native_of_onnxruntime_passes": sum(r.native for r in ort_pass),
    }


def _native_reason(r) -> str:
    if not r.ran:
        return "import or reference run fails: " + summarize_error(r.error)
    first = r.native_error.splitlines()[0] if r.native_error else ""
    return re.sub(r"max abs err [0-9.e+-]+", "max abs err …", first)[:200]


def _print_native(results, top: int) -> None:
    s = native_summary(results)
    share = s["native_of_onnxruntime_passes"] / max(1, s["onnxruntime_direct"])
    print(f"\nNative leg: {s['native']} of {s['cases']} cases; of the {s['onnxruntime_direct']} "
          f"onnxruntime passes directly, native passes {s['native_of_onnxruntime_passes']} "
          f"({share:.1%})")
    buckets = collections.Counter(_native_reason(r) for r in results
                                  if r.ort_direct and not r.native)
    print(f"Native failures among onnxruntime passes (of {sum(buckets.values())}):")
    for reason, count in buckets.most_common(top):
        print(f"  {count:4d}  {reason}")


def write_report(results, path: str, elapsed: float) -> None:
    import json
    import platform

    summary = native_summary(results)
    summary["native_share_of_onnxruntime"] = round(
        summary["native_of_onnxruntime_passes"] / max(1, summary["onnxruntime_direct"]), 4)
    failing = {r.name: _native_reason(r) for r in results if r.ort_direct and not r.native}
    report = {
        "benchmark": "onnx_node_coverage",
        "environment": {"onnx": onnx.__version__, "torch": torch.__version__,
                        "graphopt": graphopt.__version__, "python": platform.python_version(),
                        "seconds": round(elapsed, 1)},
        "summary": summary,
        "native_failures_among_onnxruntime_passes": dict(sorted(failing.items())),
        "native_failure_reasons": dict(collections.Counter(failing.values()).most_common()),
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
