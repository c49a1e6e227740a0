"""Fuzz harness: the model directory loader (``graphopt.load(DIR)``, graphopt/artifact.py).

A model directory is ``manifest.json`` (format, version, signature, files with sha256) beside
``model.graphopt`` (a safetensors bundle). An input is both, as ``u32 manifest length |
manifest bytes | bundle bytes``; the harness writes them into a fresh directory and loads it.
Whatever the bytes, loading must end in a Graph or a ``GraphoptError`` (``ArtifactError``
naming the directory and the entry), with nothing unpickled or evaluated.

Most mutations break the bundle's sha256 and are refused there, so each input is also tried
with the manifest *repaired* (when it is JSON with a ``files`` object: the bundle's size and
hash made right), which lets mutations of the bundle reach its reader and mutations of the
other manifest fields reach their checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile

from graphopt.artifact import GRAPH_FILE, MANIFEST, load_model_dir
from graphopt.errors import GraphoptError, InternalError
from graphopt.limits import memory_budget_scope

SEED_DIR = "fuzz/corpus/modeldir"
MAX_INPUT = 1 << 18
BUDGET = 1 << 24
_LEN = struct.Struct("<I")


def unpack(data: bytes) -> tuple[bytes, bytes] | None:
    """(manifest, bundle) of a packed input (``pack``), or None for one out of bounds."""
    if len(data) > MAX_INPUT or len(data) < _LEN.size:
        return None
    (size,) = _LEN.unpack_from(data)
    return data[_LEN.size:_LEN.size + size], data[_LEN.size + size:]


def test_one_input(data: bytes) -> None:
    unpacked = unpack(data)
    if unpacked is None:
        return
    manifest, bundle = unpacked
    _load(manifest, bundle)
    repaired = _repaired(manifest, bundle)
    if repaired is not None and repaired != manifest:
        _load(repaired, bundle)


def _load(manifest: bytes, bundle: bytes, loader=load_model_dir) -> None:
    """Write ``manifest`` and ``bundle`` as a model directory and run ``loader`` on it: a
    GraphoptError is an accepted rejection, any other exception a finding."""
    folder = tempfile.mkdtemp(prefix="graphopt_fuzz_modeldir_")
    try:
        with open(os.path.join(folder, MANIFEST), "wb") as f:
            f.write(manifest)
        with open(os.path.join(folder, GRAPH_FILE), "wb") as f:
            f.write(bundle)
        with memory_budget_scope(BUDGET):
            loader(folder)
    except InternalError:
        raise  # an exception no check anticipated: a finding
    except GraphoptError:
        return
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _repaired(manifest: bytes, bundle: bytes) -> bytes | None:
    """The manifest with the bundle's size and sha256 made right, if it has a files object."""
    try:
        parsed = json.loads(manifest)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("files"), dict):
        return None
    parsed["files"][GRAPH_FILE] = {"sha256": hashlib.sha256(bundle).hexdigest(),
                                   "bytes": len(bundle)}
    try:
        return json.dumps(parsed).encode()
    except (ValueError, TypeError, RecursionError):
        return None


def pack(folder: str) -> bytes:
    """A saved model directory as one input."""
    with open(os.path.join(folder, MANIFEST), "rb") as f:
        manifest = f.read()
    with open(os.path.join(folder, GRAPH_FILE), "rb") as f:
        bundle = f.read()
    return _LEN.pack(len(manifest)) + manifest + bundle


def seeds() -> list[bytes]:
    """Model directories of an MLP, a dynamic-batch MLP and an int8 MLP."""
    import warnings

    import torch

    import graphopt
    from graphopt import zoo

    warnings.simplefilter("ignore")
    graph = graphopt.trace(*zoo.get("mlp", width=8, depth=2))
    model, args = zoo.get("mlp", width=8, depth=2, batch=3)
    dynamic = graphopt.trace(model, args, dynamic_shapes=({0: torch.export.Dim("batch")},))
    out = []
    for g, extra in ((graph, {}), (dynamic, {"pipeline": "default",
                                             "figures": {"accuracy": {"mean": 0.99}}}),
                     (graphopt.quantize(graph, "dynamic"), {})):
        folder = tempfile.mkdtemp(prefix="graphopt_fuzz_modeldir_seed_")
        try:
            graphopt.save(g, os.path.join(folder, "m"), **extra)
            out.append(pack(os.path.join(folder, "m")))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return [data for data in out if len(data) <= MAX_INPUT]
