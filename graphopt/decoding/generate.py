"""``graphopt.generate``: token-by-token generation over a compiled decoder step.

One prefill step runs the whole (left-padded) prompt; each decode step runs one token per
sequence. The cache is allocated once per call (``max_length`` slots per layer); a step's new
keys/values are written into their slots, and the slot mask tells the next step which slots hold
tokens. Semantics follow transformers' ``generate``: position ids count the unpadded tokens
(padding positions get 0), finished sequences continue with the pad token, and generation stops
when every sequence produced a stop token or ``max_new_tokens`` were produced.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from graphopt.decoding.runner import CompiledDecoder
from graphopt.decoding.sampling import SamplingConfig, next_tokens
from graphopt.errors import GenerationError


def _as_ids(input_ids: Any, vocab_size: int) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise GenerationError(f"input_ids of shape {tuple(ids.shape)}: give [batch, prompt_length] "
                              "token ids with at least one token")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise GenerationError(f"input_ids are {ids.dtype}; give integer token ids")
    ids = ids.to(torch.long)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise GenerationError(f"input_ids hold token id {low if low < 0 else high}, outside the "
                              f"model's vocabulary [0, {vocab_size})")
    return ids


def _as_mask(attention_mask: Any, ids: torch.Tensor) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones_like(ids)
    mask = torch.as_tensor(attention_mask)
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(ids.shape):
        raise GenerationError(f"attention_mask {tuple(mask.shape)} does not match input_ids "
                              f"{tuple(ids.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise GenerationError("attention_mask holds values other than 0 and 1")
    mask = mask.to(torch.long)
    if not bool((mask[:, -1] == 1).all()):
        row = int((mask[:, -1] == 0).nonzero()[0])
        raise GenerationError(
            f"prompt {row} is right-padded (its last token is masked): pad prompts on the left "
            "for generation (tokenizer.padding_side = 'left')")
    return mask


def _stop_ids(eos_token_id, compiled: CompiledDecoder) -> torch.Tensor:
    if eos_token_id is None:
        ids = compiled.decoder.eos_token_ids
    elif isinstance(eos_token_id, int):
        ids = (eos_token_id,)
    else:
        ids = tuple(int(i) for i in eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def stream(compiled: CompiledDecoder, input_ids, max_new_tokens: int = 32, *,
           attention_mask=None, eos_token_id=None, pad_token_id: int | None = None,
           **sampling) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence (int64 ``[B]``) as soon as it is chosen.

    Same arguments as :func:`generate`; stops early once every sequence has stopped.
    """
    if not isinstance(compiled, CompiledDecoder):
        raise GenerationError(
            f"generate takes a compiled decoder (graphopt.trace_decoder(model).compile()), "
            f"got {type(compiled).__name__}")
    decoder = compiled.decoder
    cfg = SamplingConfig(**sampling)
    ids = _as_ids(input_ids, decoder.vocab_size)
    mask = _as_mask(attention_mask, ids)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens!r}: give an int >= 1")
    batch, prompt = ids.shape
    if prompt + max_new_tokens > decoder.max_length:
        raise GenerationError(
            f"a {prompt}-token prompt plus {max_new_tokens} new tokens exceed the decoder's "
            f"cache of {decoder.max_length} tokens: trace with a larger max_length "
            f"(graphopt.trace_decoder(model, max_length={prompt + max_new_tokens}))")
    stop = _stop_ids(eos_token_id, compiled)
    pad = decoder.pad_token_id if pad_token_id is None else int(pad_token_id)
    if stop.numel() and pad is None:
        raise GenerationError("the model has no pad token: pass pad_token_id= for sequences "
                              "that stop before the others")
    generator = cfg.generator()
    cache = compiled.new_cache(batch)
    slots = torch.zeros((batch, decoder.max_length), dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    logits, new = compiled.step(ids, positions, torch.cat([slots, mask], dim=1), cache)
    compiled.write(cache, new, 0, mask)
    slots[:, :prompt] = mask
    running = torch.ones(batch, dtype=torch.bool)
    position = positions[:, -1:]
    for produced in range(max_new_tokens):
        tokens = next_tokens(logits, cfg, generator)
        if stop.numel():
            tokens = torch.where(running, tokens, torch.full_like(tokens, pad))
            running &= ~torch.isin(tokens, stop)
        yield tokens
        if produced + 1 == max_new_tokens or not bool(running.any()):
            return
        slot = prompt + produced
        position = position + 1
        ones = torch.ones((batch, 1), dtype=torch.long)
        logits, new = compiled.step(tokens[:, None], position, torch.cat([slots, ones], 1), cache)
        compiled.write(cache, new, slot)
        slots[:, slot] = 1


def generate(compiled: CompiledDecoder, input_ids, max_new_tokens: int = 32, *,
             attention_mask=None, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             eos_token_id=None, pad_token_id: int | None = None, streamer=None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens after each prompt; returns ``[B, P + n]`` int64.

    Args:
        compiled: ``graphopt.trace_decoder(model).compile(backend=...)`` (any backend).
        input_ids: ``[B, P]`` (or ``[P]``) token ids, left-padded when prompts differ in length.
        attention_mask: ``[B, P]`` 1 for tokens, 0 for (left) padding; default all ones.
        do_sample, temperature, top_k, top_p, seed: greedy by default; sampling filters apply
            in transformers' order; ``seed`` makes sampling reproducible.
        eos_token_id: stop token(s); default the model's ``eos_token_id``; ``[]`` never stops.
        pad_token_id: what stopped sequences continue with (default the model's pad, or eos).
        streamer: called as ``streamer.put(ids)`` with the prompt, then with each step's tokens,
            and ``streamer.end()`` at the end (transformers' ``TextStreamer`` fits), or a plain
            callable called with each step's tokens.

    Raises:
        GenerationError: bad ids, mask, lengths or sampling options (the message says which).
    """
    ids = _as_ids(input_ids, compiled.decoder.vocab_size) if isinstance(
        compiled, CompiledDecoder) else input_ids
    put = getattr(streamer, "put", streamer)
    if hasattr(streamer, "put"):
        put(ids)
    steps = []
    for tokens in stream(compiled, ids, max_new_tokens, attention_mask=attention_mask,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         do_sample=do_sample, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed):
        steps.append(tokens)
        if put is not None:
            put(tokens)
    if hasattr(streamer, "end"):
        streamer.end()
    return torch.cat([ids, torch.stack(steps, dim=1)], dim=1)
