"""``graphopt show MODEL``: the IR, the op histogram, and what a pipeline changes."""

from __future__ import annotations

import argparse

from graphopt.cli._common import (
    CliError,
    add_model_argument,
    check_pipeline,
    ensure_parent,
    info,
    load,
    paragraph,
)
from graphopt.ir.graph import Graph


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "show", parents=[common], help="print the IR and op histogram (before/after a pipeline)",
        description=paragraph(
            "Print MODEL's graphopt IR and op histogram. With --pipeline, also the "
            "pass report, the IR after the pipeline and the histogram before/after."),
        epilog="examples:\n  graphopt show zoo:mlp?width=64\n"
        "  graphopt show 'zoo:bert?layers=1&seq=8' --pipeline default --dot bert.dot\n"
        "  graphopt show model.onnx --svg model.svg   (needs Graphviz's dot)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    p.add_argument("--pipeline", default=None, metavar="P",
                   help="also run this pipeline and show before/after")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--dot", metavar="PATH", help="write the (final) graph as Graphviz DOT")
    out.add_argument("--svg", metavar="PATH", help="render the (final) graph to SVG with dot")
    p.add_argument("--constants", action="store_true", help="list constants in the IR text")
    p.add_argument("--max-lines", type=int, default=None, metavar="N",
                   help="print at most N lines of IR")
    p.add_argument("--no-ir", action="store_true", help="histogram (and report) only")
    p.set_defaults(run=run)


def ir_text(graph: Graph, constants: bool, max_lines: int | None) -> str:
    lines = str(graph).splitlines()
    if not constants:
        kept = [ln for ln in lines if not ln.lstrip().startswith("const ")]
        dropped = len(lines) - len(kept)
        if dropped:
            mib = graph.constant_bytes() / 2**20
            kept.insert(1, f"  # {dropped} constants ({mib:.2f} MiB), --constants lists them")
        lines = kept
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines] + [f"  ... ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)


def histogram_table(before: Graph, after: Graph | None) -> str:
    hb = before.op_histogram()
    if after is None:
        rows = [(op, str(n)) for op, n in hb.most_common()]
        rows.append(("total", str(len(before.nodes))))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"  {op:<{width}}  {n:>6}" for op, n in rows)
    ha = after.op_histogram()
    ops = sorted(set(hb) | set(ha), key=lambda op: (-max(hb[op], ha[op]), op))
    width = max([len(op) for op in ops] + [5])
    lines = [f"  {'op':<{width}}  {'before':>6}  {'after':>6}  {'delta':>6}"]
    for op in ops + ["total"]:
        b = len(before.nodes) if op == "total" else hb[op]
        a = len(after.nodes) if op == "total" else ha[op]
        delta = f"{a - b:+d}" if a != b else ""
        lines.append(f"  {op:<{width}}  {b:>6}  {a:>6}  {delta:>6}")
    return "\n".join(lines)


def run(opts) -> int:
    check_pipeline(opts.pipeline)
    for path in (opts.dot, opts.svg):
        if path:
            ensure_parent(path)
    if opts.svg:
        from graphopt.cli.dot import dot_available

        if not dot_available():
            raise CliError("cannot write SVG: the Graphviz 'dot' binary is not installed; use "
                           "--dot PATH and render it elsewhere (dot -Tsvg PATH -o out.svg)",
                           code=1)
    spec, graph = _load_graph(opts)
    final = graph
    mib = graph.constant_bytes() / 2**20
    inputs = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    print(f"{spec}: graph {graph.name}({inputs}), {len(graph.nodes)} nodes, "
          f"{len(graph.constants)} constants ({mib:.2f} MiB)")
    if opts.pipeline is not None:
        from graphopt.cli._common import optimize_with_report

        final, report = optimize_with_report(graph, opts.pipeline)
        print("\n== pass report " + "=" * 60)
        print(report)
    if not opts.no_ir:
        title = "IR after the pipeline" if final is not graph else "IR"
        print(f"\n== {title} " + "=" * max(0, 72 - len(title)))
        print(ir_text(final, opts.constants, opts.max_lines))
    print("\n== op histogram " + "=" * 59)
    print(histogram_table(graph, final if final is not graph else None))
    if opts.dot or opts.svg:
        from graphopt.cli.dot import graph_to_dot, render_svg

        text = graph_to_dot(final)
        if opts.dot:
            from graphopt.fileio import atomic_write

            with atomic_write(opts.dot, "w") as f:
                f.write(text)
            info(f"wrote {opts.dot}")
        else:
            try:
                render_svg(text, opts.svg)
            except RuntimeError as exc:
                raise CliError(f"cannot write SVG: {exc}", code=1) from exc
            info(f"wrote {opts.svg}")
    return 0


def _load_graph(opts) -> tuple[str, Graph]:
    """MODEL's name and graph; a decoder directory (`graphopt trace-decoder`) shows its step
    graph after a line on the decoder (layers, vocabulary, cache geometry and size)."""
    decoder = _decoder_directory(opts.model)
    if decoder is None:
        loaded = load(opts.model, trust_pt2=opts.trust_pt2)
        return loaded.spec, loaded.graph()
    heads = sorted({f"{h} x {d}" for h, d in decoder.cache_heads})
    print(f"{opts.model}: decoder directory: {decoder.model_name}, {decoder.num_layers} "
          f"layer{'s' if decoder.num_layers != 1 else ''}, vocabulary {decoder.vocab_size}, "
          f"max_length {decoder.max_length}, key/value heads x dims {', '.join(heads)}, "
          f"KV cache {decoder.cache_bytes(1) / 2**20:.2f} MiB per sequence, weights "
          f"{decoder.weight_bytes() / 2**20:.2f} MiB; the step graph:")
    return opts.model, decoder.graph


def _decoder_directory(spec: str):
    """The DecoderGraph of a decoder directory; None for any other MODEL (whose loader then
    says what is wrong with it, if anything)."""
    import os

    from graphopt.artifact import DECODER_SECTION, read_manifest
    from graphopt.errors import ArtifactError

    if not os.path.isdir(spec):
        return None
    try:
        manifest = read_manifest(spec)
    except ArtifactError:
        return None
    if DECODER_SECTION not in manifest:
        return None
    from graphopt.decoding import load_decoder

    return load_decoder(spec)

