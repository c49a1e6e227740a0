"""One trace of a causal language model into a decoder *step* graph with an explicit KV cache.

A step consumes ``S`` new tokens for a batch of ``B`` sequences::

    step(input_ids[B, S], position_ids[B, S], attention_mask[B, M + S],
         past_k_0[B, H0, M, D0], past_v_0[B, H0, M, D0], ..., past_v_{L-1})
      -> (logits[B, V],  new_k_0[B, H0, S, D0], new_v_0[B, H0, S, D0], ..., new_v_{L-1})

``M`` is the cache's capacity (``max_length``, fixed at trace time); ``B`` and ``S`` are symbolic
dims, so the one graph is both the *prefill* graph (``S`` = prompt length) and the *decode* graph
(``S`` = 1). The first ``M`` entries of the mask say which cache slots hold a token (0 = empty or
padding), the last ``S`` are the new tokens' own mask. ``logits`` are the last position's only.

Why the cache is an input and not state: every backend runs the same pure function, and the
caller (graphopt/decoding/generate.py) owns one preallocated cache per generation and writes the
``S`` new keys/values into their slots - no concatenated copy of the cache per token. The model's
attention sees the slots before the new tokens (slot order does not change attention: keys are
summed over with their softmax weights, and empty slots are masked out).

The trace reuses the model's own forward (transformers' ``DynamicCache`` filled from the inputs),
so GPT-2, Llama-style models (RMSNorm, rotary embeddings, SwiGLU, grouped-query attention) and
other decoder-only ``*ForCausalLM`` classes need no per-architecture code.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch

from graphopt.errors import GenerationError, GraphoptError
from graphopt.ir.graph import Graph

# Dims of the example inputs the trace uses: neither may be 0 or 1 (torch.export specializes
# example sizes 0 and 1 to constants, and both dims must stay symbolic).
_EXAMPLE_BATCH, _EXAMPLE_SEQ = 2, 3
MAX_BATCH = 4096


def _cache_class():
    try:
        from transformers import DynamicCache
    except ImportError as exc:  # pragma: no cover - transformers ships with the test extra
        raise GenerationError("trace_decoder needs the transformers package "
                              "(pip install transformers)") from exc
    return DynamicCache


def _cache_keyword(model: torch.nn.Module) -> str:
    """The forward's cache parameter: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise GenerationError(
        f"{type(model).__name__}.forward takes no key/value cache (no 'cache' or "
        "'past_key_values' parameter): trace_decoder needs a decoder-only causal language model "
        "such as transformers' GPT2LMHeadModel or LlamaForCausalLM")


class DecoderStep(torch.nn.Module):
    """The traced function: a model step with the cache as explicit tensors (module doc)."""

    def __init__(self, model: torch.nn.Module, num_layers: int, max_length: int):
        super().__init__()
        self.model = model
        self.num_layers, self.max_length = num_layers, max_length
        self.cache_keyword = _cache_keyword(model)
        params = inspect.signature(model.forward).parameters
        # Only the last position's logits: the LM head is the largest matmul of a prefill.
        # As a position tensor: an int (keep the last k) would slice with a negative start on
        # the symbolic sequence dim.
        self.keeps_last = "logits_to_keep" in params

    def forward(self, input_ids, position_ids, attention_mask, past):
        cache = _cache_class()()
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        seq = input_ids.shape[1]
        keep = {"logits_to_keep": torch.arange(seq - 1, seq)} if self.keeps_last else {}
        out = self.model(input_ids=input_ids, position_ids=position_ids,
                         attention_mask=attention_mask, use_cache=True,
                         **{self.cache_keyword: cache}, **keep)
        new = []
        for layer in range(self.num_layers):
            keys, values = _layer_tensors(out.past_key_values, layer)
            new += [keys[:, :, self.max_length:], values[:, :, self.max_length:]]
        return (out.logits[:, -1], *new)


def _layer_tensors(cache, layer: int):
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    return cache[layer][0], cache[layer][1]  # legacy tuple-of-tuples caches


@dataclass(frozen=True)
class DecoderGraph:
    """A decoder step graph and what generation needs to know about it (module doc).

    Attributes:
        graph: the step graph; optimize or quantize it and put it back with :meth:`with_graph`.
        max_length: cache capacity: prompt plus generated tokens never exceed it.
        cache_heads: per layer, ``(heads, head_dim)`` of its keys and values.
        cache_dtype: dtype of the cache tensors.
        vocab_size: logits width.
        eos_token_ids: the model's end-of-sequence ids (generation's default stop tokens).
        pad_token_id: what finished sequences are padded with (``eos`` when the model has none).
        model_name: the traced model's class name.
    """

    graph: Graph
    max_length: int
    cache_heads: tuple[tuple[int, int], ...]
    cache_dtype: torch.dtype
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    model_name: str

    @property
    def num_layers(self) -> int:
        return len(self.cache_heads)

    def with_graph(self, graph: Graph) -> "DecoderGraph":
        """The same decoder with ``graph`` (an optimized or quantized step graph) in place.

        Raises:
            GenerationError: ``graph``'s inputs or outputs are not those of a step graph.
        """
        if len(graph.inputs) != len(self.graph.inputs) or \
                len(graph.outputs) != len(self.graph.outputs):
            raise GenerationError(
                f"graph '{graph.name}' has {len(graph.inputs)} inputs and {len(graph.outputs)} "
                f"outputs; a step graph of {self.model_name} has {len(self.graph.inputs)} and "
                f"{len(self.graph.outputs)} (pass the graph of decoder.graph after optimizing)")
        for old, new in zip(self.graph.inputs, graph.inputs):
            if old.type != new.type:
                raise GenerationError(
                    f"input %{new.name} of graph '{graph.name}' is {new.type}, the step graph's "
                    f"%{old.name} is {old.type}: a pass changed the step's signature")
        return replace(self, graph=graph)

    def cache_bytes(self, batch: int = 1) -> int:
        """Bytes of one generation's preallocated cache for ``batch`` sequences."""
        item = torch.empty((), dtype=self.cache_dtype).element_size()
        return sum(2 * batch * heads * self.max_length * dim * item
                   for heads, dim in self.cache_heads)

    def weight_bytes(self) -> int:
        """Bytes of the graph's constants (weights, after any quantization)."""
        return self.graph.constant_bytes()

    def compile(self, backend: str = "native", threads: int | None = None, **options):
        """Compile the step graph (``graphopt.compile``) into a :class:`CompiledDecoder`."""
        from graphopt.decoding.runner import CompiledDecoder

        return CompiledDecoder.build(self, backend=backend, threads=threads, **options)


def _probe_cache(model: torch.nn.Module, cache_keyword: str):
    """Run the model on a two-token prompt; its cache tells layers, heads, dims and dtype."""
    ids = torch.zeros((1, 2), dtype=torch.long)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True)
    except Exception as exc:
        raise GenerationError(
            f"{type(model).__name__} did not run on a 2-token prompt ({type(exc).__name__}: "
            f"{exc}); trace_decoder needs a causal language model taking input_ids") from exc
    cache = getattr(out, "past_key_values", None)
    logits = getattr(out, "logits", None)
    if cache is None or logits is None:
        raise GenerationError(
            f"{type(model).__name__} returned no logits or no key/value cache with "
            "use_cache=True: trace_decoder needs a causal language model (*ForCausalLM / "
            "*LMHeadModel), not a bare encoder or decoder body")
    layers = len(getattr(cache, "layers", cache))
    heads = []
    for layer in range(layers):
        keys, values = _layer_tensors(cache, layer)
        if keys.dim() != 4 or keys.shape != values.shape or keys.shape[2] != 2:
            raise GenerationError(
                f"layer {layer} of {type(model).__name__}'s cache holds keys {tuple(keys.shape)} "
                f"and values {tuple(values.shape)}; trace_decoder supports full-attention "
                "caches of [batch, heads, sequence, head_dim] (no sliding-window or "
                "state-space layers)")
        heads.append((int(keys.shape[1]), int(keys.shape[3])))
    return tuple(heads), keys.dtype, int(logits.shape[-1])


def _token_ids(config, name: str) -> tuple[int, ...]:
    value = getattr(config, name, None)
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def trace_decoder(model: torch.nn.Module, max_length: int = 256) -> DecoderGraph:
    """Trace a causal language model once into a :class:`DecoderGraph` (see module doc).

    Args:
        model: a decoder-only transformers causal LM (``GPT2LMHeadModel``,
            ``LlamaForCausalLM``, ...); put in eval mode here.
        max_length: cache capacity, prompt included (fixed in the graph's input types).

    Raises:
        GenerationError: not a causal LM with a full-attention cache, ``max_length`` out of
            range, or the model does not export (the message says why).
    """
    if not isinstance(model, torch.nn.Module):
        raise GenerationError(f"trace_decoder takes a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        raise GenerationError(f"{type(model).__name__} is an encoder-decoder model; "
                              "trace_decoder supports decoder-only causal language models")
    positions = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None)
    if not isinstance(max_length, int) or max_length < 2 or (positions and max_length > positions):
        raise GenerationError(
            f"max_length={max_length!r}: give an int from 2 to the model's "
            f"{positions or 'maximum'} positions (prompt plus new tokens)")
    model.eval()
    cache_keyword = _cache_keyword(model)
    cache_heads, cache_dtype, vocab_size = _probe_cache(model, cache_keyword)
    step = DecoderStep(model, len(cache_heads), max_length)
    graph = _export_step(step, cache_heads, cache_dtype, max_length, type(model).__name__)
    eos = _token_ids(config, "eos_token_id")
    pad = _token_ids(config, "pad_token_id")
    return DecoderGraph(graph=graph, max_length=max_length, cache_heads=cache_heads,
                        cache_dtype=cache_dtype, vocab_size=vocab_size, eos_token_ids=eos,
                        pad_token_id=pad[0] if pad else (eos[0] if eos else None),
                        model_name=type(model).__name__)


def _export_step(step: DecoderStep, cache_heads, cache_dtype, max_length: int,
                 model_name: str) -> Graph:
    from graphopt.frontend import trace

    batch, seq = _EXAMPLE_BATCH, _EXAMPLE_SEQ
    past = tuple(torch.zeros((batch, heads, max_length, dim), dtype=cache_dtype)
                 for heads, dim in cache_heads for _ in ("k", "v"))
    ids = torch.zeros((batch, seq), dtype=torch.long)
    positions = torch.arange(seq).expand(batch, seq).contiguous()
    mask = torch.cat([torch.zeros((batch, max_length), dtype=torch.long),
                      torch.ones((batch, seq), dtype=torch.long)], dim=1)
    # Dim.DYNAMIC, not named dims with ranges: the export's solver cannot prove some always-true
    # guards (Llama's grouped-query reshape yields Min(32*s + 2048, 64*s + 4096) == 32*s + 2048)
    # and rejects named dims for them; the mask's length comes out as seq + max_length anyway.
    dyn = torch.export.Dim.DYNAMIC
    dynamic = ({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, {0: dyn, 1: dyn}, tuple({0: dyn} for _ in past))
    try:
        graph = trace(step, (ids, positions, mask, past), dynamic_shapes=dynamic)
    except GraphoptError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise GenerationError(
            f"torch.export could not trace a step of {model_name} with an explicit cache "
            f"({type(exc).__name__}: {first})") from exc
    graph.name = f"{model_name}_step"
    return graph
