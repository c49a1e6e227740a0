"""Fuzz harness: the compressed model loader (``graphopt.load`` of a ``.gcm`` file).

A ``.gcm`` file is a header, a zlib-compressed JSON directory (the IR text, one entry per
constant) and CRC-32-checked sections (Huffman code tables and streams, raw or deflated
arrays). Whatever the bytes, loading must end in a Graph or a ``GraphoptError``
(``CompressionError`` naming the file and the constant or section, ``ResourceLimitError`` for
sizes over the budget), with nothing unpickled or evaluated. A graph that loads is also run
once on small random inputs by the reference interpreter.

Most byte mutations of a file land in a checksummed section or in the compressed directory and
are refused there. So the corpus also holds files *unpacked* (``unpack``: the directory as plain
JSON, then the sections; no checksums), which the harness packs into a valid container before
loading (``pack``): their mutations reach the JSON entries, the graph text and the Huffman and
sparse decoders. A mutated file is also tried again with every checksum made right.
"""

from __future__ import annotations

import json
import struct
import zlib

import torch

from graphopt.backends.compressed_model import load_compressed_bytes
from graphopt.codec.container import MAGIC
from graphopt.errors import GraphoptError, InternalError
from graphopt.limits import memory_budget_scope

SEED_DIR = "fuzz/corpus/gcm"
MAX_INPUT = 1 << 20
BUDGET = 1 << 26
_HEADER = struct.Struct("<4sHHII")


def test_one_input(data: bytes) -> None:
    if len(data) > MAX_INPUT:
        return
    if not data.startswith(MAGIC):
        packed = pack(data)
        if packed is not None:
            _load_and_run(packed)
    _load_and_run(data)
    repaired = _repaired(data)
    if repaired is not None and repaired != data:
        _load_and_run(repaired)


def unpack(data: bytes) -> bytes:
    """A .gcm file as ``u32 length | directory JSON | sections`` (the file's own section
    bytes), the form whose mutations reach past the checksums."""
    _, _, _, dir_len, _ = _HEADER.unpack_from(data)
    inflate = zlib.decompressobj()
    plain = inflate.decompress(data[_HEADER.size:_HEADER.size + dir_len], 1 << 22)
    start = (_HEADER.size + dir_len + 7) & ~7
    return struct.pack("<I", len(plain)) + plain + data[start:]


def pack(data: bytes) -> bytes | None:
    """The container of an unpacked input: directory compressed, every checksum computed from
    the bytes at the offsets it names (whatever they hold)."""
    if len(data) < 4:
        return None
    (length,) = struct.unpack_from("<I", data)
    plain, body = data[4:4 + length], data[4 + length:]
    try:
        directory = json.loads(plain)
        for entry in directory["sections"]:
            begin = int(entry["offset"])
            entry["crc32"] = zlib.crc32(body[begin:begin + int(entry["length"])])
        plain = json.dumps(directory).encode("utf-8")
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
        pass  # mutated past JSON: packed as it is (the reader must refuse it)
    text = zlib.compress(plain)
    start = (_HEADER.size + len(text) + 7) & ~7
    head = _HEADER.pack(MAGIC, 1, 0, len(text), zlib.crc32(text))
    return head + text + b"\0" * (start - _HEADER.size - len(text)) + body


def _load_and_run(data: bytes) -> None:
    try:
        with memory_budget_scope(BUDGET):
            graph = load_compressed_bytes(data)
            _run_once(graph)
    except InternalError:
        raise  # an exception no check anticipated: a finding
    except GraphoptError:
        return


def _run_once(graph) -> None:
    import graphopt

    args = []
    for value in graph.inputs:
        if not value.type.is_static or value.type.numel > 1 << 16:
            return
        if not value.dtype.is_floating:
            return
        args.append(torch.randn(*value.shape).to(value.dtype.torch))
    graphopt.run(graph, *args)


def _repaired(data: bytes) -> bytes | None:
    """``data`` with its directory re-compressed and every CRC recomputed (``pack`` of its
    ``unpack``), or None when the header or the directory cannot be read at all."""
    try:
        return pack(unpack(data))
    except (ValueError, struct.error, zlib.error):
        return None


def seeds() -> list[bytes]:
    """Small compressed models: an MLP and a CNN, shared and pruned, and one with biases shared
    and float constants kept raw, deflated and inline."""
    import tempfile

    import graphopt

    out = []
    torch.manual_seed(0)
    models = [
        (torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 5)),
         torch.randn(2, 12), {"bits": 3}),
        (torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                             torch.nn.Linear(4 * 4 * 4, 3)), torch.randn(1, 1, 6, 6),
         {"bits": 2, "conv_bits": 3, "bias_bits": 2}),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for i, (model, x, options) in enumerate(models):
            graph = graphopt.prune(graphopt.trace(model, (x,)), "magnitude", sparsity=0.5)
            path = f"{folder}/seed{i}.gcm"
            graphopt.compress(graph, path, **options)
            with open(path, "rb") as f:
                out.append(f.read())
    assert all(seed.startswith(MAGIC) for seed in out)
    return out + [unpack(seed) for seed in out]


if __name__ == "__main__":  # a quick local check: every seed loads
    for seed in seeds():
        graph = load_compressed_bytes(seed if seed.startswith(MAGIC) else pack(seed))
        _run_once(graph)
        print(len(seed), "bytes:", len(graph.nodes), "nodes,", len(graph.constants),
              "constants")
