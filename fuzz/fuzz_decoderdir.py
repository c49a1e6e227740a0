"""Fuzz harness: the decoder directory loader (``graphopt.load(DIR)`` of a saved decoder,
graphopt/decoding/directory.py over graphopt/artifact.py).

An input is a decoder directory packed as fuzz_modeldir.py packs a model directory: ``u32
manifest length | manifest bytes | bundle bytes``. Whatever the bytes, loading must end in a
DecoderGraph, a Graph (a manifest without its decoder section) or a ``GraphoptError``, with
nothing unpickled or evaluated.

Byte mutations rarely leave JSON intact, and the decoder section is checked only behind the
manifest and the file hashes, so each input is tried three ways: as it is; with the bundle's
size and sha256 repaired in the manifest (mutations of the bundle and of the other fields reach
their checks); and, when the repaired manifest has a decoder section, with one field of it set
to a hostile value that the input's CRC chooses (a wrong type, an out-of-range or
off-by-one number, an unknown dtype, a removed or unknown key), which reaches every check of
the section and every check of the section against the graph.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib

from fuzz_modeldir import MAX_INPUT, _repaired, unpack  # the same packing and hash repair
from fuzz_modeldir import _load as _load_with  # the same writing and error triage

from graphopt.artifact import DECODER_SECTION
from graphopt.decoding.directory import SECTION_KEYS, load_directory

SEED_DIR = "fuzz/corpus/decoderdir"
_FIELDS = sorted(SECTION_KEYS) + ["<removed>", "<unknown key>"]
_VALUES = [None, True, False, -1, 0, 1, 2, 3, 15, 16, 17, 63, 64, 65, 1 << 20, (1 << 20) + 1,
           1 << 31, 1 << 63, 2.0, 1e308, "", "float32", "float16", "bfloat16", "float64",
           "int64", "torch.float32", "x" * 300, "\x1b[2J", [], [0], [63], [64], [-1], [True],
           [[1, 1]], [[2, 8]], [[2, 8], [2, 8]], [[2, 8]] * 3, [[0, 8]], [[2, 0]], [[2]],
           [["2", 8]], [[True, 8]], [[4097, 8]], {}, {"a": 1}]


def test_one_input(data: bytes) -> None:
    unpacked = unpack(data)
    if unpacked is None:
        return
    manifest, bundle = unpacked
    _load(manifest, bundle)
    repaired = _repaired(manifest, bundle)
    if repaired is None:
        return
    if repaired != manifest:
        _load(repaired, bundle)
    choice = zlib.crc32(data)  # any change to the input picks another edit
    edited = _edited_section(repaired, choice % len(_FIELDS), choice // len(_FIELDS))
    if edited is not None:
        _load(edited, bundle)


def _load(manifest: bytes, bundle: bytes) -> None:
    _load_with(manifest, bundle, load_directory)


def _edited_section(manifest: bytes, field_index: int, value_index: int) -> bytes | None:
    """``manifest`` with one field of its decoder section replaced, removed or added."""
    parsed = json.loads(manifest)  # (_repaired produced it: valid JSON, an object)
    section = parsed.get(DECODER_SECTION)
    if not isinstance(section, dict):
        return None
    field = _FIELDS[field_index % len(_FIELDS)]
    value = _VALUES[value_index % len(_VALUES)]
    if field == "<removed>":
        section.pop(sorted(section)[value_index % len(section)] if section else "", None)
    elif field == "<unknown key>":
        section["cache_layout"] = value
    else:
        section[field] = value
    return json.dumps(parsed).encode()


def seeds() -> list[bytes]:
    """Decoder directories of micro GPT-2 and Llama-style models (one layer, width 16, a
    64-token vocabulary, max_length 16): small enough to mutate quickly."""
    import warnings

    import torch
    import transformers

    import graphopt
    from fuzz_modeldir import pack

    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    models = [
        transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=64, bos_token_id=63,
            eos_token_id=63)),
        transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=32, vocab_size=64, max_position_embeddings=64)),
    ]
    out = []
    for model in models:
        decoder = graphopt.trace_decoder(model.eval(), max_length=16)
        decoder = decoder.with_graph(graphopt.optimize(decoder.graph))
        folder = tempfile.mkdtemp(prefix="graphopt_fuzz_decoderdir_seed_")
        try:
            graphopt.save(decoder, os.path.join(folder, "d"), pipeline="default")
            out.append(pack(os.path.join(folder, "d")))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return [data for data in out if len(data) <= MAX_INPUT]
