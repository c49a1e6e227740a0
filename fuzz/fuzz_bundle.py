"""Fuzz harness: the torch ``.graphopt`` bundle loader (``torch_bundle.load_graph``).

A bundle is a safetensors file: an 8-byte header length, a JSON header (tensor entries plus
``__metadata__`` with the IR text and the pytree I/O specs), then the tensor bytes. Whatever the
bytes, loading must end in a graph or a ``GraphoptError`` (``ArtifactError`` naming the entry,
``ResourceLimitError`` for declared sizes over the budget), with nothing unpickled or imported.
A graph that loads must also lower to a torch module (``to_torch``).
"""

from __future__ import annotations

import io

from graphopt.backends.torch_bundle import load_graph
from graphopt.backends.torch_module import to_torch
from graphopt.errors import GraphoptError, InternalError
from graphopt.limits import memory_budget_scope

SEED_DIR = "fuzz/corpus/bundle"
MAX_INPUT = 1 << 18
BUDGET = 1 << 24  # a seed's tensors are a few KiB; a mutated size beyond this is refused early


def test_one_input(data: bytes) -> None:
    if len(data) > MAX_INPUT:
        return
    try:
        with memory_budget_scope(BUDGET):
            graph = load_graph(io.BytesIO(data))
            to_torch(graph)
    except InternalError:
        raise  # an exception no check anticipated: a finding
    except GraphoptError:
        return


def seeds() -> list[bytes]:
    """Bundles of small zoo models: an MLP, the conv zoo, a dynamic-batch MLP and an int8 MLP."""
    import warnings

    import torch

    import graphopt
    from graphopt import zoo
    from graphopt.backends.torch_bundle import save_bundle

    warnings.simplefilter("ignore")
    graphs = [graphopt.trace(*zoo.get("mlp", width=8, depth=2)),
              graphopt.trace(*zoo.get("convzoo", size=8, batch=1))]
    model, args = zoo.get("mlp", width=8, depth=2, batch=3)
    graphs.append(graphopt.trace(model, args,
                                 dynamic_shapes=({0: torch.export.Dim("batch")},)))
    graphs.append(graphopt.quantize(graphs[0], "dynamic"))
    out = []
    for graph in graphs:
        buffer = _Sink()
        save_bundle(graph, buffer.path)
        out.append(buffer.read())
    return [data for data in out if len(data) <= MAX_INPUT]


class _Sink:
    """A temporary file name for ``save_bundle`` (it writes atomically to a path)."""

    def __init__(self):
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="graphopt_fuzz_bundle_")
        self.path = f"{self.folder}/seed.graphopt"

    def read(self) -> bytes:
        import shutil

        with open(self.path, "rb") as f:
            data = f.read()
        shutil.rmtree(self.folder, ignore_errors=True)
        return data
