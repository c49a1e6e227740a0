"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling.

The filters apply in transformers' order (temperature, then top-k, then top-p), so a user who
moves from ``model.generate(do_sample=True, top_k=..., top_p=...)`` keeps the same distribution;
the random draws come from graphopt's own seeded generator, so sampled tokens are reproducible
per seed, not identical to transformers' draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from graphopt.errors import GenerationError


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen (``do_sample=False``: greedy, the other fields unused)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int | None = None

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature <= 0:
            raise GenerationError(f"temperature={self.temperature!r}: give a number > 0 "
                                  "(use do_sample=False for greedy decoding)")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise GenerationError(f"top_k={self.top_k!r}: give an int >= 0 (0 turns it off)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p={self.top_p!r}: give a number in (0, 1] "
                                  "(1 turns it off)")

    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None  # torch's global generator: reproducible under torch.manual_seed
        gen = torch.Generator()
        gen.manual_seed(int(self.seed))
        return gen


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """``logits[B, V]`` scaled by temperature, with tokens outside top-k / top-p set to -inf."""
    scores = logits / cfg.temperature if cfg.temperature != 1.0 else logits.clone()
    if 0 < cfg.top_k < scores.shape[-1]:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if cfg.top_p < 1.0:
        ordered, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # A token is dropped when the tokens ranked above it already hold top_p of the mass;
        # the most likely token always stays.
        mass_above = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_above >= cfg.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, -math.inf)
    return scores


def next_tokens(logits: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of ``logits[B, V]`` (int64 ``[B]``)."""
    if not cfg.do_sample:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(filter_logits(logits, cfg), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
