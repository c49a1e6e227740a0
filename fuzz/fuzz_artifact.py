"""Fuzz harness: the native artifact loader (``graphopt.native.load``) and the plan it builds.

An artifact is an ``.npz`` zip archive: ``__graph__`` (IR text), ``__meta__`` (JSON options) and
one ``const/<name>`` array per weight. Whatever the bytes, loading must end in a NativeModule or
a ``GraphoptError`` (``ArtifactError`` naming the file and the entry, ``ResourceLimitError`` for
sizes over the budget, ``LoweringError`` for a node the runtime cannot run), with nothing
unpickled. A module that loads is also run once on small random inputs: the C++ runtime checks
every step it is given, so a crafted graph must not make it read or write out of bounds (run
this harness against an ASan build of graphopt._C to see that; ``make asan`` builds one).
"""

from __future__ import annotations

import io
import struct
import warnings
import zipfile

import torch

from graphopt.errors import GraphoptError, InternalError
from graphopt.limits import memory_budget_scope
from graphopt.native.artifact import load

SEED_DIR = "fuzz/corpus/artifact"
MAX_INPUT = 1 << 20
BUDGET = 1 << 26  # seeds hold a few hundred KiB; a mutated size beyond this is refused early


def test_one_input(data: bytes) -> None:
    if len(data) > MAX_INPUT:
        return
    _load_and_run(data)
    # np.savez stores members uncompressed, so most byte mutations land in a member and fail
    # its CRC-32 check: the input is tried again with the CRCs made right, which lets the
    # mutation reach the .npy headers, the JSON meta, the graph text and the plan.
    repaired = _with_valid_crcs(data)
    if repaired is not None and repaired != data:
        _load_and_run(repaired)


def _load_and_run(data: bytes) -> None:
    try:
        with memory_budget_scope(BUDGET):
            module = load(io.BytesIO(data), threads=1)
            _run_once(module)
    except InternalError:
        raise  # an exception no check anticipated: a finding
    except GraphoptError:
        return


def _with_valid_crcs(data: bytes) -> bytes | None:
    """The same archive rewritten with correct CRCs and offsets, or None when no member can be
    recovered. Members are read without the CRC check when zipfile can walk the archive, else
    salvaged from their local headers (a mutation that inserted or erased bytes inside a
    member shifts every offset after it)."""
    members = _walk(data)
    if members is None:
        members = _salvage(data)
    members = [(name, payload) for name, payload in members or () if name]
    if not members:
        return None
    out = io.BytesIO()
    try:
        with warnings.catch_warnings(), zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            warnings.simplefilter("ignore")  # duplicate names stay (the loader must see them)
            for name, payload in members:
                archive.writestr(name, payload)
    except (ValueError, OSError, IndexError):  # a name zipfile will not write ("/" -> "")
        return None
    return out.getvalue()


def _walk(data: bytes) -> list[tuple[str, bytes]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = []
            for info in archive.infolist():
                if info.file_size > MAX_INPUT:
                    return None
                with archive.open(info) as fp:
                    fp._expected_crc = None  # CPython's ZipExtFile: skip the check
                    members.append((info.filename, fp.read(MAX_INPUT + 1)))
            return members
    except Exception:  # noqa: BLE001  (anything zipfile trips on: salvage instead)
        return None


_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"


def _salvage(data: bytes) -> list[tuple[str, bytes]]:
    """Stored members found by their local headers; each payload runs to the next header."""
    starts = [i for i in _find_all(data, _LOCAL)]
    central = data.find(_CENTRAL)
    ends = starts[1:] + [central if central > 0 else len(data)]
    members = []
    for start, end in zip(starts, ends):
        header = data[start:start + 30]
        if len(header) < 30:
            break
        _, _, _, method, _, _, _, _, _, name_len, extra_len = struct.unpack("<4s5H3I2H", header)
        begin = start + 30 + name_len + extra_len
        if method != 0 or begin > end:
            continue
        name = data[start + 30:start + 30 + name_len].decode("utf-8", "replace")
        members.append((name, data[begin:end]))
    return members


def _find_all(data: bytes, token: bytes):
    i = data.find(token)
    while i >= 0:
        yield i
        i = data.find(token, i + 1)


def _run_once(module) -> None:
    """One call on random inputs of the declared shapes (size symbols = 2)."""
    from graphopt.model_loader import random_inputs

    symbols = _size_symbols(module.graph)
    inputs = random_inputs(module.graph, {name: 2 for name in symbols}, seed=0)
    with torch.no_grad():
        module(*inputs)


def _size_symbols(graph) -> set[str]:
    names: set[str] = set()
    for value in graph.inputs:
        for dim in value.type.shape:
            if not isinstance(dim, int):
                names.update(str(s) for s in getattr(dim, "free_symbols", ()))
    return names


def seeds() -> list[bytes]:
    """Artifacts of small models: an MLP, the conv zoo, the tensor-ops zoo (indexing,
    reductions, attention), a one-layer BERT with tiny widths, and a dynamic-int8 MLP."""
    import os
    import shutil
    import tempfile
    import warnings

    import graphopt
    from graphopt import zoo

    warnings.simplefilter("ignore")
    graphs = [graphopt.trace(*zoo.get("mlp", width=8, depth=2)),
              graphopt.trace(*zoo.get("convzoo", size=8, batch=1)),
              graphopt.trace(*zoo.get("tensorops", seq=6, batch=1))]
    graphs.append(graphopt.quantize(graphs[0], "dynamic"))
    bert = _tiny_bert()
    if bert is not None:
        graphs.append(graphopt.trace(*bert))
    folder = tempfile.mkdtemp(prefix="graphopt_fuzz_artifact_")
    out = []
    try:
        for i, graph in enumerate(graphs):
            path = os.path.join(folder, f"seed{i}.npz")
            graphopt.compile(graph, backend="native", threads=1).save(path)
            with open(path, "rb") as f:
                out.append(f.read())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [data for data in out if len(data) <= MAX_INPUT]


def _tiny_bert():
    """(model, args) of a 1-layer BERT with 32-wide hidden states, or None without
    transformers (zoo's "bert" is BERT-base sized: 90 MB of embeddings)."""
    try:
        import transformers
    except ImportError:
        return None
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=16, use_cache=False)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    return model, (torch.randint(0, 64, (1, 8)),)
