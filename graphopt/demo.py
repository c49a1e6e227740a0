"""``make demo``: the whole graphopt story on a built-in model.

trace -> inspect the IR -> check the reference interpreter against eager PyTorch -> optimize
(showing what each pass did) -> lower (ONNX, torch, native) -> verify numerics -> benchmark
against eager PyTorch and plain onnxruntime, with a table and a plot. Steps whose subsystem is
not available in this build are reported and skipped.

Run: ``python -m graphopt.demo [--model bert] [--layers N] [--rounds R] [--torch-compile]``.
The default (BERT with 4 layers, seq 128) takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo

DEFAULT_PLOT = os.path.join("benchmarks", "results", "demo.png")


def _max_error(actual, expected) -> float:
    pairs = zip(pytree.tree_leaves(actual), pytree.tree_leaves(expected))
    return max(float((a - e).abs().max()) for a, e in pairs)


def _banner(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 88 - len(text)), flush=True)


def _first_line(exc: BaseException) -> str:
    from graphopt.bench.report import error_summary

    return error_summary(exc)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert", choices=sorted(zoo.ZOO))
    parser.add_argument("--layers", type=int, default=None,
                        help="depth for transformer models (default: 4 for bert/gpt2)")
    parser.add_argument("--pipeline", default="default")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=10, help="benchmark rounds")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also benchmark torch.compile (adds 10-60 s of compilation)")
    parser.add_argument("--plot", default=DEFAULT_PLOT, help="where to write the plot")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = _parse_args(argv)
    layers = opts.layers or (4 if opts.model in ("bert", "gpt2") else None)
    kwargs = {"layers": layers} if layers else {}
    model, args = zoo.get(opts.model, **kwargs)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    with torch.no_grad():
        expected = model(*args)
    demo_start = time.perf_counter()

    graph, trace_s = _trace_and_show_ir(model, args, opts.model, layers)

    _banner("4. reference interpreter vs eager PyTorch")
    start = time.perf_counter()
    actual = graphopt.run(graph, *args)
    print(f"graphopt.run: {time.perf_counter() - start:.2f} s, output type "
          f"{type(actual).__name__}, max |error| = {_max_error(actual, expected):.2e}")

    optimize = getattr(graphopt, "optimize", None)
    if optimize is None:
        print("\n(optimization passes are not part of this build yet)")
        return 0
    optimized = _optimize_and_show(optimize, graph, args, expected, opts.pipeline)

    _banner("6. lower and verify numerics against eager")
    _lower_and_verify(optimized, args, expected)

    _benchmark_against_eager(opts, model, args, graph, trace_s)
    print(f"demo took {time.perf_counter() - demo_start:.0f} s")
    return 0


def _trace_and_show_ir(model, args, model_name: str, layers: int | None):
    """Steps 1-3: trace and verify the graph, then show its op histogram and first IR lines.

    Returns the graph and the seconds tracing took.
    """
    _banner(f"1. trace {type(model).__name__} ('zoo:{model_name}"
            f"{f'?layers={layers}' if layers else ''}') with torch.export")
    start = time.perf_counter()
    graph = graphopt.trace(model, args)
    trace_s = time.perf_counter() - start
    print(f"traced in {trace_s:.1f} s: {len(graph.nodes)} nodes, "
          f"{len(graph.constants)} constants ({graph.constant_bytes() / 2**20:.1f} MiB)")
    graph.verify()
    print("verify(): ok")

    _banner("2. op histogram")
    for op, count in graph.op_histogram().most_common():
        print(f"  {op:<20} {count:>5}")

    _banner("3. the IR (first lines of print(graph))")
    lines = str(graph).splitlines()
    body = [line for line in lines if not line.lstrip().startswith("const ")]
    for line in body[:12]:
        print("  " + (line if len(line) < 150 else line[:147] + "..."))
    print(f"  ... ({len(lines)} lines)")
    return graph, trace_s


def _optimize_and_show(optimize, graph, args, expected, pipeline: str):
    """Step 5: optimize, showing what each pass did and the error against eager."""
    _banner(f"5. optimize with the '{pipeline}' pipeline: what each pass did")
    optimized, report = optimize(graph, pipeline, report=True)
    print(report)
    from graphopt.cli.show import histogram_table

    print("\nop histogram before/after:")
    print(histogram_table(graph, optimized))
    print(f"max |error| of the optimized graph vs eager (interpreter): "
          f"{_max_error(graphopt.run(optimized, *args), expected):.2e}")
    return optimized


def _benchmark_against_eager(opts: argparse.Namespace, model, args, graph, trace_s: float):
    """Step 7: benchmark the backends, print the table, write the plot and its JSON."""
    _banner("7. benchmark against eager PyTorch (interleaved rounds, same threads)")
    from graphopt.model_loader import LoadedModel

    loaded = LoadedModel(f"zoo:{opts.model}", "zoo", opts.model, model, args, trace_s=trace_s,
                         _graph=graph)
    backends = ["eager"] + (["torch-compile"] if opts.torch_compile else []) + [
        "onnxruntime", "graphopt-onnxruntime", "graphopt-native", "graphopt-torch"]
    bench = graphopt.benchmark(loaded, backends=backends, pipeline=opts.pipeline,
                               rounds=opts.rounds, warmup=2, max_time_s=90)
    print(bench)
    plot = bench.plot(opts.plot)
    bench.to_json(os.path.splitext(opts.plot)[0] + ".json")
    print(f"\nplot: {os.path.abspath(plot)}")
    print(f"json: {os.path.abspath(os.path.splitext(opts.plot)[0] + '.json')}")


def _lower_and_verify(optimized, args, expected) -> None:
    with tempfile.TemporaryDirectory(prefix="graphopt_demo_") as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            start = time.perf_counter()
            graphopt.to_onnx(optimized, path)
            import onnx

            onnx.checker.check_model(path)
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
            print(f"to_onnx: {path} ({size / 2**20:.1f} MiB) in "
                  f"{time.perf_counter() - start:.1f} s; onnx.checker: ok")
        except Exception as exc:  # a missing lowering is worth seeing, not fatal to the demo
            print(f"to_onnx: failed: {_first_line(exc)}")
    for backend in ("onnxruntime", "native"):
        try:
            fn = graphopt.compile(optimized, backend=backend)
            print(f"graphopt.compile(backend={backend!r}): max |error| vs eager = "
                  f"{_max_error(fn(*args), expected):.2e}")
        except Exception as exc:
            print(f"graphopt.compile(backend={backend!r}): unavailable: {_first_line(exc)}")
    module = graphopt.to_torch(optimized)
    with torch.no_grad():
        print(f"graphopt.to_torch: max |error| vs eager = "
              f"{_max_error(module(*args), expected):.2e}")


if __name__ == "__main__":
    raise SystemExit(main())
