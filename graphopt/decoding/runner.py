"""A compiled decoder step and the cache it runs against (graphopt/decoding/trace.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from graphopt.decoding.trace import DecoderGraph
from graphopt.errors import GenerationError
from graphopt.limits import check_bytes


@dataclass
class CompiledDecoder:
    """A :class:`DecoderGraph` compiled for one backend; ``graphopt.generate`` runs it.

    Attributes:
        decoder: the traced decoder (graph and cache geometry).
        backend: the backend's name.
        fn: the compiled step (``graphopt.compile`` of ``decoder.graph``).
    """

    decoder: DecoderGraph
    backend: str
    fn: Callable[..., Any]

    @classmethod
    def build(cls, decoder: DecoderGraph, backend: str = "native", threads: int | None = None,
              **options) -> "CompiledDecoder":
        from graphopt.compile import compile as compile_graph

        return cls(decoder, backend, compile_graph(decoder.graph, backend=backend,
                                                   threads=threads, **options))

    def new_cache(self, batch: int) -> list[torch.Tensor]:
        """Zeroed cache tensors for ``batch`` sequences (keys and values per layer).

        Raises:
            ResourceLimitError: the cache is over the memory budget (graphopt.limits).
        """
        check_bytes(self.decoder.cache_bytes(batch),
                         f"the KV cache of {self.decoder.model_name} for batch {batch} and "
                         f"max_length {self.decoder.max_length}")
        return [torch.zeros((batch, heads, self.decoder.max_length, dim),
                            dtype=self.decoder.cache_dtype)
                for heads, dim in self.decoder.cache_heads for _ in ("k", "v")]

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
             attention_mask: torch.Tensor, cache: list[torch.Tensor]):
        """Run one step: returns ``(logits[B, V] float32, new keys/values [B, H, S, D])``.

        ``attention_mask[B, max_length + S]``: the cache slots' mask, then the new tokens'.
        """
        outputs = self.fn(input_ids, position_ids, attention_mask, tuple(cache))
        if not isinstance(outputs, (tuple, list)) or \
                len(outputs) != 1 + 2 * self.decoder.num_layers:
            raise GenerationError(
                f"the compiled step of {self.decoder.model_name} on {self.backend} returned "
                f"{type(outputs).__name__}; expected logits and {2 * self.decoder.num_layers} "
                "key/value tensors (was the graph replaced by one of another signature?)")
        logits = torch.as_tensor(outputs[0])
        return logits.float(), [torch.as_tensor(t) for t in outputs[1:]]

    @staticmethod
    def write(cache: list[torch.Tensor], new: list[torch.Tensor], start: int,
              mask: torch.Tensor | None = None) -> None:
        """Copy a step's new keys/values into cache slots ``start..``; with ``mask[B, S]`` the
        padded slots are zeroed (a fully masked padding row may compute NaN, and 0 x NaN would
        leak through attention)."""
        for slot_tensor, values in zip(cache, new):
            target = slot_tensor[:, :, start:start + values.shape[2]]
            target.copy_(values)
            if mask is not None:
                target.masked_fill_(mask[:, None, :, None] == 0, 0)
