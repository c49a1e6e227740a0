"""Graph sizes: graphopt's passes against torch.onnx + onnxsim + onnxruntime's optimizer.

Per model (batch 1): node counts of

* ``traced`` / ``default``: graphopt IR nodes after ``graphopt.trace`` and after
  ``graphopt.optimize(graph, "default")``;
* ``torch.onnx``: ``torch.onnx.export`` with the dynamo exporter (``dynamo=True``, torch's
  default and the one its documentation recommends; the legacy TorchScript exporter, opset 17,
  only where the dynamo one fails; the table says which one produced the model),
  ``+onnxsim``: that model after ``onnxsim.simplify``, ``+ORT``: the onnxsim model
  after onnxruntime's own optimizer (``ORT_ENABLE_EXTENDED``, saved with
  ``SessionOptions.optimized_model_filepath``; EXTENDED is the highest level whose result is
  plain, hardware-independent ONNX + com.microsoft ops);
* ``graphopt ONNX``: ``graphopt.to_onnx`` of the optimized graph (onnxruntime contrib ops
  allowed; in parentheses: ``contrib_ops=False``, standard ONNX only), ``+ORT``: that model
  after the same onnxruntime pass.

``max err`` is the largest absolute difference between onnxruntime running graphopt's model and
eager PyTorch. Usage::

    python benchmarks/bench_passes.py [--models bert,gpt2,resnet50,mobilenetv2,mlp] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo

MODELS = {
    "bert": {"seq": 128},  # BERT-base, 12 layers
    "gpt2": {"seq": 64},  # GPT-2 small, 12 layers
    "resnet50": {},  # 224 x 224
    "mobilenetv2": {},  # 224 x 224
    "mlp": {},  # 4 x Linear(1024)
}


def tensors(tree) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def nodes(path: str) -> int:
    return len(onnx.load(path, load_external_data=False).graph.node)


class _TensorsOut(torch.nn.Module):
    """The model with its outputs flattened to a tuple of tensors (what TorchScript traces)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return tuple(tensors(self.model(*args)))


def export_torch(model, args, path: str) -> str:
    """torch.onnx.export: the dynamo exporter, the legacy TorchScript one if that fails.

    Returns the exporter that produced ``path``.
    """
    names = [f"input_{i}" for i in range(len(tensors(args)))]
    errors = []
    for kind in ("dynamo", "legacy"):
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                if kind == "legacy":
                    torch.onnx.export(
                        _TensorsOut(model),
                        tuple(args),
                        path,
                        dynamo=False,
                        input_names=names,
                        opset_version=17,
                    )
                else:
                    program = torch.onnx.export(
                        model, tuple(args), dynamo=True, input_names=names, verbose=False
                    )
                    program.save(path)
            return kind
        except Exception as exc:  # noqa: BLE001  (try the next exporter)
            errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            model.eval()  # the legacy exporter leaves the wrapped model in training mode
    raise RuntimeError("torch.onnx.export failed: " + " | ".join(errors))


def simplify(src: str, dst: str) -> None:
    import onnxsim

    with contextlib.redirect_stdout(io.StringIO()):
        model, ok = onnxsim.simplify(onnx.load(src))
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified model")
    onnx.save(model, dst)


def ort_session(path: str, optimized_path: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.intra_op_num_threads = torch.get_num_threads()
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_nodes(path: str) -> int:
    """Node count of ``path`` after onnxruntime's EXTENDED graph optimizations."""
    out = path + ".ort.onnx"
    ort_session(path, out)
    return nodes(out)


def measure(name: str, folder: str) -> dict:
    model, args = zoo.get(name, **MODELS[name])
    with torch.no_grad():
        expected = tensors(model(*args))
    row: dict = {"model": name}
    start = time.perf_counter()
    graph = graphopt.trace(model, args)
    row["trace_s"] = time.perf_counter() - start
    start = time.perf_counter()
    optimized = graphopt.optimize(graph, "default")
    row["optimize_s"] = time.perf_counter() - start
    row["traced"], row["default"] = len(graph.nodes), len(optimized.nodes)

    torch_path = os.path.join(folder, f"{name}-torch.onnx")
    sim_path = os.path.join(folder, f"{name}-onnxsim.onnx")
    ours = os.path.join(folder, f"{name}-graphopt.onnx")
    row["exporter"] = export_torch(model, args, torch_path)
    row["torch_onnx"] = nodes(torch_path)
    try:
        simplify(torch_path, sim_path)
        row["onnxsim"] = nodes(sim_path)
    except Exception as exc:  # noqa: BLE001  (report and go on with the plain export)
        print(f"  {name}: onnxsim failed: {exc}", file=sys.stderr)
        sim_path, row["onnxsim"] = torch_path, None
    row["onnxsim_ort"] = ort_nodes(sim_path)

    graphopt.to_onnx(optimized, ours)
    row["graphopt_onnx"] = nodes(ours)
    row["graphopt_onnx_standard"] = len(graphopt.to_onnx(optimized, contrib_ops=False).graph.node)
    row["graphopt_ort"] = ort_nodes(ours)
    session = ort_session(ours)
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), tensors(args))}
    got = session.run(None, feeds)
    row["max_err"] = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        (
            f"torch {torch.__version__}, onnxruntime {ort.__version__}; torch.onnx: dynamo "
            "exporter, legacy (opset 17) where dynamo fails; graphopt: opset 21; "
            "ORT = ORT_ENABLE_EXTENDED"
        ),
        "",
        (
            "| model | IR traced | IR `default` | torch.onnx (exporter) | +onnxsim | +onnxsim +ORT "
            "| graphopt ONNX (standard) | graphopt ONNX +ORT | max err (ORT) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sim = "failed" if r["onnxsim"] is None else r["onnxsim"]
        lines.append(
            f"| {r['model']} | {r['traced']} | {r['default']} | {r['torch_onnx']} "
            f"({r['exporter']}) | {sim} | "
            f"{r['onnxsim_ort']} | {r['graphopt_onnx']} ({r['graphopt_onnx_standard']}) | "
            f"{r['graphopt_ort']} | {r['max_err']:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    import logging

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows as JSON here")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_passes_") as folder:
        for name in [m.strip() for m in opts.models.split(",") if m.strip()]:
            if name not in MODELS:
                parser.error(f"unknown model '{name}'")
            print(f"{name} ...", file=sys.stderr, flush=True)
            rows.append(measure(name, folder))
    print(markdown(rows))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
