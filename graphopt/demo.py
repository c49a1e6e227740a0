"""``make demo``: the whole graphopt story on a built-in model.

trace -> inspect the IR -> check the reference interpreter against eager PyTorch -> optimize
(showing what each pass did) -> lower -> verify numerics -> compare latency against eager.
Steps whose subsystem is not available in this build are reported and skipped.

Run: ``python -m graphopt.demo [--model bert] [--layers N]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo


def _max_error(actual, expected) -> float:
    pairs = zip(pytree.tree_leaves(actual), pytree.tree_leaves(expected))
    return max(float((a - e).abs().max()) for a, e in pairs)


def _banner(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 88 - len(text)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert", choices=sorted(zoo.ZOO))
    parser.add_argument("--layers", type=int, default=None, help="depth for transformer models")
    opts = parser.parse_args(argv)

    kwargs = {"layers": opts.layers} if opts.layers else {}
    model, args = zoo.get(opts.model, **kwargs)
    with torch.no_grad():
        expected = model(*args)

    _banner(f"1. trace {type(model).__name__} ('zoo:{opts.model}') with torch.export")
    start = time.perf_counter()
    graph = graphopt.trace(model, args)
    print(f"traced in {time.perf_counter() - start:.1f} s: {len(graph.nodes)} nodes, "
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

    _banner("4. reference interpreter vs eager PyTorch")
    start = time.perf_counter()
    actual = graphopt.run(graph, *args)
    print(f"graphopt.run: {time.perf_counter() - start:.2f} s, output type "
          f"{type(actual).__name__}, max |error| = {_max_error(actual, expected):.2e}")
    module = graphopt.to_torch(graph)
    with torch.no_grad():
        print(f"graphopt.to_torch(graph)(x): max |error| = "
              f"{_max_error(module(*args), expected):.2e}")

    optimize = getattr(graphopt, "optimize", None)
    if optimize is None:
        print("\n(optimization passes are not part of this build yet)")
        return 0
    _banner("5. optimize with the 'default' pipeline")
    optimized = optimize(graph, "default")
    report = getattr(optimized, "report", None)
    if report is not None:
        print(report)
    print(f"nodes: {len(graph.nodes)} -> {len(optimized.nodes)}")
    print(f"max |error| vs eager: {_max_error(graphopt.run(optimized, *args), expected):.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
