"""``graphopt bench MODEL``: benchmark backends, print a table, write JSON/markdown/plot."""

from __future__ import annotations

import argparse

from graphopt.cli._common import (
    CliError,
    add_model_argument,
    add_target_arguments,
    check_pipeline,
    cli_target,
    ensure_parent,
    info,
    load,
    paragraph,
)
from graphopt.model_loader import parse_value


def add_parser(sub, common) -> None:
    from graphopt.bench.backends import BENCH_BACKENDS, DEFAULT_BACKENDS

    backends = "\n".join(f"  {name:<22} {b.doc}" for name, b in BENCH_BACKENDS.items())
    p = sub.add_parser(
        "bench", parents=[common], help="benchmark a model on several backends",
        description=paragraph(
            "Time MODEL on several backends with the same thread count, warm-up and "
            "interleaved rounds (A B C A B C ...). Prints p50/p90/min/IQR latency, speedup vs "
            "eager, setup time, peak memory, output error vs eager and artifact size. Backends "
            "that are unavailable here are listed with the reason."),
        epilog=f"backends:\n{backends}\n\nexamples:\n"
        "  graphopt bench zoo:mlp --backends eager,onnxruntime,graphopt-onnxruntime\n"
        "  graphopt bench zoo:bert?layers=2 --threads 2 --json out.json --plot out.png\n"
        "  graphopt bench zoo:mobilenetv2 --per-pass --backend-option torch-compile.mode="
        "max-autotune",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), metavar="A,B,...",
                   help="comma-separated backends, timed in this order (default: all)")
    add_target_arguments(p, "intra-op threads for every backend")
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pipeline for the graphopt-* backends (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=40, metavar="R",
                   help="timed samples per backend, interleaved (default: %(default)s)")
    p.add_argument("--block", type=int, default=4, metavar="N",
                   help="samples per visit of a backend, then a pause (default: %(default)s)")
    p.add_argument("--pause", type=float, default=0.1, metavar="S",
                   help="seconds between two backends' blocks, so that a spinning thread "
                   "pool goes idle (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, metavar="W",
                   help="untimed calls after the first one (default: %(default)s)")
    p.add_argument("--max-time", type=float, default=None, metavar="S",
                   help="stop timing after this many seconds (at least 3 rounds)")
    p.add_argument("--json", metavar="PATH", help="write the machine-readable report")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown report")
    p.add_argument("--plot", metavar="PATH.png", help="plot latency and speedup")
    p.add_argument("--per-pass", nargs="?", const="auto", default=None, metavar="BACKEND",
                   help="attribute the speedup to passes by timing pipeline prefixes (on the "
                   "first graphopt backend of --backends, or BACKEND)")
    p.add_argument("--backend-option", action="append", default=[], metavar="B.KEY=VALUE",
                   help="a backend option, e.g. torch-compile.mode=max-autotune, "
                   "onnxruntime.exporter=dynamo (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _backend_list(text: str) -> list[str]:
    from graphopt.bench.backends import BENCH_BACKENDS

    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise CliError("--backends is empty")
    unknown = [b for b in names if b not in BENCH_BACKENDS]
    if unknown:
        raise CliError(f"unknown backend '{unknown[0]}'; known backends: "
                       f"{', '.join(BENCH_BACKENDS)}")
    return names


def _backend_options(items: list[str], backends: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        backend, dot, option = key.rpartition(".")
        if not eq or not dot or not option:
            raise CliError(f"bad --backend-option '{item}': expected BACKEND.KEY=VALUE")
        if backend not in backends:
            raise CliError(f"--backend-option '{item}' names backend '{backend}', which is not "
                           f"in --backends")
        out.setdefault(backend, {})[option] = parse_value(value)
    return out


def _per_pass_backend(choice: str | None, backends: list[str]) -> str | None:
    from graphopt.bench.per_pass import graph_backends

    if choice is None:
        return None
    usable = graph_backends()
    if choice == "auto":
        return next((b for b in backends if b in usable), "graphopt-onnxruntime")
    if choice not in usable:
        raise CliError(f"--per-pass needs a graphopt backend ({', '.join(usable)}), got "
                       f"'{choice}'")
    return choice


def run(opts) -> int:
    import graphopt

    backends = _backend_list(opts.backends)
    options = _backend_options(opts.backend_option, backends)
    per_pass = _per_pass_backend(opts.per_pass, backends)
    check_pipeline(opts.pipeline)
    if (opts.rounds < 1 or opts.block < 1 or opts.warmup < 0 or opts.pause < 0
            or (opts.threads is not None and opts.threads < 1)):
        raise CliError("--rounds, --block and --threads must be >= 1, --warmup and --pause "
                       ">= 0")
    target = cli_target(opts)  # ResourceLimitError (exit 2) past the thread budget
    for path in (opts.json, opts.markdown, opts.plot):
        if path:
            ensure_parent(path)
    loaded = load(opts.model, trust_pt2=opts.trust_pt2, need_graph=False)
    report = graphopt.benchmark(
        loaded, backends=backends, pipeline=opts.pipeline, target=target,
        warmup=opts.warmup, rounds=opts.rounds, block=opts.block, pause_s=opts.pause,
        max_time_s=opts.max_time,
        per_pass=per_pass or False, backend_options=options,
        progress=False if opts.no_progress else None)
    print(report.table())
    if opts.json:
        report.to_json(opts.json)
        info(f"wrote {opts.json}")
    if opts.markdown:
        report.to_markdown(opts.markdown)
        info(f"wrote {opts.markdown}")
    if opts.plot:
        report.plot(opts.plot)
        info(f"wrote {opts.plot}")
    return 0 if report.ok_results else 1
