"""Calibration data for a decoder's step graph: the steps of generating known sequences.

Quantization that calibrates (``graphopt.quantize(..., rounding="gptq")``, static int8) runs
the step graph on argument tuples. A prompt alone is not enough: the step graph's LM head only
sees each step's last position, so a set of prompts gives it one row each. Replaying whole
sequences (a prefill of the prompt, then one decode step per later token, over a cache that a
compiled decoder fills) shows every layer the positions it will see when generating.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from graphopt.decoding.runner import CompiledDecoder
from graphopt.errors import GenerationError


def calibration_steps(compiled: CompiledDecoder, sequences: Iterable[torch.Tensor],
                      prompt: int) -> Iterator[tuple]:
    """Step-graph argument tuples replaying each ``[1, T]`` token sequence: its first
    ``prompt`` tokens as one prefill step, then tokens ``prompt..T-2`` one decode step each.
    ``compiled`` (e.g. the float decoder) computes the keys and values the cache holds.

    A generator: each tuple refers to the cache, which the next step writes into, so consume
    the items in order, one at a time (``graphopt.quantize`` streams them).

    Raises:
        GenerationError: a sequence that is not ``[1, T]`` with ``prompt < T <= max_length``.
    """
    decoder = compiled.decoder
    for index, seq in enumerate(sequences):
        seq = torch.as_tensor(seq, dtype=torch.long)
        if seq.dim() != 2 or seq.shape[0] != 1 or not prompt < seq.shape[1] <= decoder.max_length:
            raise GenerationError(
                f"calibration sequence {index} has shape {list(seq.shape)}; expected [1, T] "
                f"with {prompt} < T <= max_length {decoder.max_length}")
        cache = compiled.new_cache(1)
        slots = torch.zeros((1, decoder.max_length), dtype=torch.long)
        starts = [0] + list(range(prompt, seq.shape[1] - 1))
        for start in starts:
            end = prompt if start == 0 else start + 1
            args = (seq[:, start:end], torch.arange(start, end)[None],
                    torch.cat([slots, torch.ones((1, end - start), dtype=torch.long)], 1),
                    tuple(cache))
            yield args
            _, new = compiled.step(*args[:3], cache)
            compiled.write(cache, new, start)
            slots[:, start:end] = 1


__all__ = ["calibration_steps"]
