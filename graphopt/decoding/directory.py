"""Decoder directories: a traced decoder saved as a model directory and loaded back whole.

``graphopt.save(decoder, DIR)`` writes the step graph as any model directory does
(graphopt/artifact.py: the bundle, every file's sha256, the format version) and adds the
manifest's ``decoder`` section, what ``graphopt.generate`` needs besides the graph::

    "decoder": {"max_length": 256, "cache_heads": [[12, 64], [12, 64], ...],
                "cache_dtype": "float32", "vocab_size": 50257, "eos_token_ids": [50256],
                "pad_token_id": 50256, "model_name": "GPT2LMHeadModel"}

``graphopt.load(DIR)`` (``load_directory``) returns a :class:`DecoderGraph` for such a directory
and a Graph for a plain one; ``load_decoder`` insists on a decoder. Where only a plain graph
fits (``artifact.load_model_dir``: the CLI's MODEL, ``graphopt serve``, ``graphopt drift``), a
decoder directory is refused instead of being read as its bare step graph, which would lose the
cache geometry and the stop tokens without a word.

The section is checked like the rest of the manifest, before the graph is parsed: exactly the
keys above; integers that are not booleans, within bounds (``MAX_LENGTH`` and the others
below); ``cache_dtype`` one of ``CACHE_DTYPES``; token ids inside the vocabulary; a printable
model name. Then against the graph: ``3 + 2 * layers`` inputs (ids, positions, mask, a key and a
value per layer) and ``1 + 2 * layers`` outputs, each cache input
``[batch, heads, max_length, head_dim]`` in the cache dtype, logits ``[batch, vocab_size]``.
A violation raises ``ArtifactError`` naming the manifest, the field and what to do. Saving runs
the same checks (``GenerationError``), so graphopt never writes a directory it would refuse.
"""

from __future__ import annotations

import os
from typing import Any

from graphopt.artifact import (
    DECODER_SECTION,
    GRAPH_FILE,
    MANIFEST,
    load_listed_graph,
    read_manifest,
    save_model_dir,
)
from graphopt.decoding.runner import CompiledDecoder
from graphopt.decoding.trace import DecoderGraph
from graphopt.errors import ArtifactError, GenerationError, entry_point
from graphopt.ir.dtypes import DType
from graphopt.ir.graph import Graph

# Bounds of the section's numbers: far above any real model, low enough that a crafted
# manifest cannot make later arithmetic (cache sizes, loops over layers) explode.
MAX_LENGTH = 1 << 20
MAX_LAYERS = 1024
MAX_HEADS = 4096
MAX_HEAD_DIM = 1 << 16
MAX_VOCAB = 1 << 24
MAX_STOP_TOKENS = 256
MAX_NAME = 200
CACHE_DTYPES = ("float32", "float16", "bfloat16", "float64")  # DType member names
SECTION_KEYS = frozenset({"max_length", "cache_heads", "cache_dtype", "vocab_size",
                          "eos_token_ids", "pad_token_id", "model_name"})
_LOAD_HINT = (" (the manifest was edited or written by another tool: re-create the directory "
              "with graphopt.save(decoder, DIR) or `graphopt trace-decoder`)")

__all__ = ["CACHE_DTYPES", "check_graph", "check_section", "decoder_section", "load_decoder",
           "load_directory", "save_decoder"]


@entry_point("graphopt.save of a decoder")
def save_decoder(decoder: DecoderGraph | CompiledDecoder, directory: str | os.PathLike, *,
                 pipeline: str | None = None, target: Any = None, figures: dict | None = None,
                 onnx: bool = False, native: bool = False) -> dict:
    """Write ``decoder`` (a :class:`DecoderGraph`, or the decoder of a
    :class:`CompiledDecoder`) as a decoder directory: a model directory
    (``graphopt.artifact.save_model_dir``, same options; ``onnx`` / ``native`` store those
    lowerings of the step graph beside it) whose manifest has the ``decoder`` section.
    Returns the manifest.

    Raises:
        GenerationError: not a decoder, or metadata a load would refuse (a cache dtype outside
            ``CACHE_DTYPES``, a pad token outside the vocabulary, ...).
    """
    if isinstance(decoder, CompiledDecoder):
        decoder = decoder.decoder
    if not isinstance(decoder, DecoderGraph):
        raise GenerationError(f"save_decoder takes a DecoderGraph (graphopt.trace_decoder) or a "
                              f"CompiledDecoder, got {type(decoder).__name__}")
    section = decoder_section(decoder)
    return save_model_dir(decoder.graph, directory, pipeline=pipeline, target=target,
                          figures=figures, onnx=onnx, native=native, decoder=section)


def decoder_section(decoder: DecoderGraph) -> dict:
    """The manifest's ``decoder`` section for ``decoder`` (plain JSON), checked as a load
    checks it.

    Raises:
        GenerationError: a field that a load would refuse (the message names it).
    """
    names = [name for name in CACHE_DTYPES if DType[name].torch == decoder.cache_dtype]
    if not names:
        raise GenerationError(f"{decoder.model_name}: a cache of {decoder.cache_dtype} cannot "
                              "be saved; decoder directories hold caches of "
                              f"{', '.join(CACHE_DTYPES)}")
    section = {"max_length": decoder.max_length,
               "cache_heads": [list(pair) for pair in decoder.cache_heads],
               "cache_dtype": names[0], "vocab_size": decoder.vocab_size,
               "eos_token_ids": list(decoder.eos_token_ids),
               "pad_token_id": decoder.pad_token_id, "model_name": decoder.model_name}
    where = f"graphopt.save of {decoder.model_name!r}"
    check_section(section, where, GenerationError, "")
    check_graph(section, decoder.graph, where, GenerationError, "")
    return section


@entry_point("loading a decoder directory")
def load_decoder(directory: str | os.PathLike) -> DecoderGraph:
    """The :class:`DecoderGraph` of a decoder directory, every file and the section checked.

    Raises:
        ArtifactError: not a model directory, not a decoder directory (a plain graph), or any
            check of graphopt/artifact.py or of this module failed (the message says which).
    """
    folder = os.fspath(directory)
    manifest = read_manifest(folder)
    if DECODER_SECTION not in manifest:
        raise ArtifactError(
            f"{folder}: not a decoder directory (its manifest has no '{DECODER_SECTION}' "
            "section: it holds a plain graph, which graphopt.load(DIR) returns); save a traced "
            "decoder with graphopt.save(decoder, DIR) or `graphopt trace-decoder MODEL -o DIR`")
    return _decoder_from(folder, manifest)


@entry_point("graphopt.load of a model directory")
def load_directory(directory: str | os.PathLike) -> Graph | DecoderGraph:
    """What ``graphopt.load(DIR)`` returns: the :class:`DecoderGraph` of a decoder directory,
    the Graph of a plain model directory (both verified; ``ArtifactError`` otherwise)."""
    folder = os.fspath(directory)
    manifest = read_manifest(folder)
    if DECODER_SECTION in manifest:
        return _decoder_from(folder, manifest)
    return load_listed_graph(folder, manifest)


def _decoder_from(folder: str, manifest: dict) -> DecoderGraph:
    where = os.path.join(folder, MANIFEST)
    section = manifest[DECODER_SECTION]
    check_section(section, where, ArtifactError, _LOAD_HINT)  # before parsing the graph
    graph = load_listed_graph(folder, manifest)
    check_graph(section, graph, where, ArtifactError, _LOAD_HINT)
    return DecoderGraph(
        graph=graph, max_length=section["max_length"],
        cache_heads=tuple((heads, dim) for heads, dim in section["cache_heads"]),
        cache_dtype=DType[section["cache_dtype"]].torch, vocab_size=section["vocab_size"],
        eos_token_ids=tuple(section["eos_token_ids"]), pad_token_id=section["pad_token_id"],
        model_name=section["model_name"])


# ------------------------------------------------------------------------------- the checks
def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_section(section: Any, where: str, error: type = ArtifactError,
                  hint: str = _LOAD_HINT) -> None:
    """Check a ``decoder`` section's keys, types and bounds (module doc); raises ``error``
    with ``where`` (the manifest), the field, the problem and ``hint``."""
    def fail(field: str, problem: str, value: Any) -> Exception:
        return error(f"{where}: decoder.{field} {problem}, got {_short(value)}{hint}")

    if not isinstance(section, dict) or set(section) != SECTION_KEYS:
        keys = set(section) if isinstance(section, dict) else set()
        raise error(f"{where}: the decoder section must be an object with exactly the fields "
                    f"{sorted(SECTION_KEYS)}: missing {sorted(SECTION_KEYS - keys)}, unknown "
                    f"{sorted(keys - SECTION_KEYS)}{hint}")
    if not _is_int(section["max_length"], 2, MAX_LENGTH):
        raise fail("max_length", f"must be an int from 2 to {MAX_LENGTH}", section["max_length"])
    vocab = section["vocab_size"]
    if not _is_int(vocab, 2, MAX_VOCAB):
        raise fail("vocab_size", f"must be an int from 2 to {MAX_VOCAB}", vocab)
    heads = section["cache_heads"]
    if not (isinstance(heads, list) and 1 <= len(heads) <= MAX_LAYERS and all(
            isinstance(pair, list) and len(pair) == 2 and _is_int(pair[0], 1, MAX_HEADS)
            and _is_int(pair[1], 1, MAX_HEAD_DIM) for pair in heads)):
        raise fail("cache_heads", f"must list 1 to {MAX_LAYERS} layers as [heads, head_dim] "
                   f"(heads 1..{MAX_HEADS}, head_dim 1..{MAX_HEAD_DIM})", heads)
    if section["cache_dtype"] not in CACHE_DTYPES:
        raise fail("cache_dtype", f"must be one of {', '.join(CACHE_DTYPES)}",
                   section["cache_dtype"])
    eos = section["eos_token_ids"]
    if not (isinstance(eos, list) and len(eos) <= MAX_STOP_TOKENS
            and all(_is_int(t, 0, vocab - 1) for t in eos)):
        raise fail("eos_token_ids", f"must be a list of at most {MAX_STOP_TOKENS} token ids "
                   f"inside the vocabulary [0, {vocab})", eos)
    pad = section["pad_token_id"]
    if pad is not None and not _is_int(pad, 0, vocab - 1):
        raise fail("pad_token_id", f"must be null or a token id inside the vocabulary "
                   f"[0, {vocab})", pad)
    name = section["model_name"]
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable()):
        raise fail("model_name", f"must be printable text of 1 to {MAX_NAME} characters", name)


def _static(dim: Any) -> int | None:
    """A dim's value when it is a number (a symbolic dim: None)."""
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim
    return int(dim) if getattr(dim, "is_Integer", False) else None


def check_graph(section: dict, graph: Graph, where: str, error: type = ArtifactError,
                hint: str = _LOAD_HINT) -> None:
    """Check that ``graph``'s inputs and outputs are those of the step graph the (checked)
    ``section`` describes (module doc); raises ``error`` naming the value and the fields."""
    layers = len(section["cache_heads"])
    if len(graph.inputs) != 3 + 2 * layers or len(graph.outputs) != 1 + 2 * layers:
        raise error(
            f"{where}: decoder.cache_heads lists {layers} layer{'s' if layers != 1 else ''}, "
            f"so the step graph takes {3 + 2 * layers} inputs (ids, positions, mask, a key and "
            f"a value per layer) and returns {1 + 2 * layers} (logits, a new key and value per "
            f"layer); {GRAPH_FILE} has {len(graph.inputs)} and {len(graph.outputs)}{hint}")
    for value in graph.inputs[:3]:
        if value.dtype is not DType.int64 or len(value.shape) != 2:
            raise error(f"{where}: step graph input %{value.name} is {value.type}; a decoder step "
                        f"takes int64 [batch, tokens] ids and positions and an int64 mask{hint}")
    logits = graph.outputs[0]
    if not logits.dtype.is_floating or len(logits.shape) != 2 or \
            _static(logits.shape[1]) != section["vocab_size"]:
        raise error(f"{where}: step graph output %{logits.name} is {logits.type}; "
                    f"decoder.vocab_size says the logits are [batch, {section['vocab_size']}]"
                    f"{hint}")
    dtype = DType[section["cache_dtype"]]
    for layer, (heads, dim) in enumerate(section["cache_heads"]):
        for index in (2 * layer, 2 * layer + 1):
            past, new = graph.inputs[3 + index], graph.outputs[1 + index]
            past_dims = [_static(d) for d in past.shape]
            new_dims = [_static(d) for d in new.shape]
            if past.dtype is not dtype or past_dims[1:] != [heads, section["max_length"], dim]:
                raise error(
                    f"{where}: step graph input %{past.name} is {past.type}; decoder."
                    f"cache_heads[{layer}], max_length and cache_dtype say it is [batch, {heads}, "
                    f"{section['max_length']}, {dim}] {dtype}{hint}")
            if not new.dtype.is_floating or len(new_dims) != 4 or \
                    (new_dims[1], new_dims[3]) != (heads, dim):
                raise error(
                    f"{where}: step graph output %{new.name} is {new.type}; decoder."
                    f"cache_heads[{layer}] says it is [batch, {heads}, tokens, {dim}]{hint}")
