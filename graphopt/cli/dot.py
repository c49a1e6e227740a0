"""A Graphviz DOT writer for graphopt graphs (no networkx/pydot), and SVG through ``dot``.

One box per node (op, output name and type, non-default attrs abbreviated), ellipses for graph
inputs and outputs; edges follow SSA values. Constants are not drawn (BERT has hundreds); a node
lists how many constant operands it has instead.
"""

from __future__ import annotations

import shutil
import subprocess

from graphopt.ir.graph import Graph

_FUSED_HINT = ("fused", "attention", "gemm", "conv_bn", "quant")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _clip(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def graph_to_dot(graph: Graph, *, attrs: bool = True) -> str:
    """The DOT text of ``graph``."""
    lines = [f'digraph "{_escape(graph.name)}" {{',
             "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
             'fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#555555"];']
    ids: dict[int, str] = {}
    for i, value in enumerate(graph.inputs):
        ids[id(value)] = f"in{i}"
        lines.append(f'  in{i} [shape=ellipse, fillcolor="#e3f4e3", '
                     f'label="%{_escape(value.name)}\\n{_escape(str(value.type))}"];')
    for n, node in enumerate(graph.nodes):
        nid = f"n{n}"
        label = [node.op]
        label += [f"%{v.name}: {_clip(str(v.type), 40)}" for v in node.outputs]
        consts = sum(1 for v in node.inputs if v is not None and v.is_constant)
        if attrs:
            text = _attr_text(node)
            if text:
                label.append(_clip(text))
        if consts:
            label.append(f"+{consts} const")
        fill = "#fde8c8" if any(h in node.op for h in _FUSED_HINT) else None
        style = f', fillcolor="{fill}"' if fill else ""
        lines.append(f'  {nid} [label="{_escape(chr(10).join(label))}"{style}];')
        for value in node.outputs:
            ids[id(value)] = nid
        for value in node.inputs:
            if value is None or value.is_constant:
                continue
            src = ids.get(id(value))
            if src is not None:
                lines.append(f"  {src} -> {nid};")
    for i, value in enumerate(graph.outputs):
        lines.append(f'  out{i} [shape=ellipse, fillcolor="#f4e3e3", label="output {i}"];')
        src = ids.get(id(value))
        if src is not None:
            lines.append(f'  {src} -> out{i} [label="{_escape(_clip(str(value.type), 30))}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _attr_text(node) -> str:
    attrs = getattr(node, "attrs", None)
    if not attrs:
        return ""
    try:
        items = dict(attrs).items()
    except (TypeError, ValueError):
        return str(attrs)
    return ", ".join(f"{k}={_short_value(v)}" for k, v in items)


def _short_value(value) -> str:
    text = str(list(value)) if isinstance(value, tuple) else str(value)
    return _clip(text, 20)


def dot_available() -> bool:
    return shutil.which("dot") is not None


def render_svg(dot_text: str, path: str) -> None:
    """Render DOT text to SVG with Graphviz's ``dot`` binary.

    Raises:
        RuntimeError: ``dot`` is not installed or failed.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("the Graphviz 'dot' binary is not installed; write --dot PATH "
                           "instead and render it elsewhere (dot -Tsvg PATH -o out.svg)")
    proc = subprocess.run([exe, "-Tsvg", "-o", path], input=dot_text.encode(),
                          capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed: {proc.stderr.decode(errors='replace').strip()}")
