"""Saving and loading natively compiled models.

The artifact is the optimized graph, not the plan: one ``.npz`` file holding the IR text
(``graphopt.parse`` form), every constant array by name, and the compile options. Loading
parses the graph and plans it again (milliseconds; weights are packed for the machine that
loads it, so an artifact moves between CPUs with different instruction sets). The model's
pytree input/output structure is not stored: a loaded model takes and returns flat tensors.
"""

from __future__ import annotations

import json
import os

import numpy as np

from graphopt.ir.dtypes import DType

FORMAT = "graphopt-native/1"


def save(module, path: str | os.PathLike) -> None:
    """Write ``module`` (a NativeModule) to ``path`` (the exact file name is kept)."""
    graph = module.graph
    arrays = {f"const/{name}": v.data for name, v in graph.constants.items()}
    meta = {"format": FORMAT, "threads": module.threads, "fallback": module.fallback,
            "sparse": getattr(module, "sparse", "auto"),
            "bf16": [n for n, v in graph.constants.items() if v.dtype is DType.bfloat16]}
    with open(path, "wb") as f:
        np.savez(f, __graph__=np.array(str(graph)), __meta__=np.array(json.dumps(meta)),
                 **arrays)


def load(path: str | os.PathLike, threads: int | None = None):
    """Load an artifact written by ``NativeModule.save``; returns a NativeModule."""
    from graphopt.ir.parser import parse_graph
    from graphopt.native.module import NativeModule

    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} artifact (format {meta.get('format')})")
        constants = {k[len("const/"):]: data[k] for k in data.files if k.startswith("const/")}
        graph = parse_graph(str(data["__graph__"]), constants)
    return NativeModule(graph, threads=threads or meta["threads"], fallback=meta["fallback"],
                        sparse=meta.get("sparse", "auto"))
