"""Masked (right-padded) BERT and GPT-2 from the zoo, as the benchmarks run them.

Every backend must match eager both with the padded mask and with an all-ones mask over the
same ids: a backend that silently dropped the mask would return the all-ones output for the
padded mask and fail. Eager's outputs with the two masks differ where the mask has an effect:
BERT's real tokens attend to the padding unless it is masked; GPT-2's real tokens never see
the right-padding (causal attention), so there only the padded positions' outputs change.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, NamedTuple

import pytest
import torch

import graphopt
from graphopt import zoo
from graphopt.zoo import padding_mask, token_ids

RTOL, ATOL = 1e-4, 1e-4
SEQ = 16
CASES = [("bert", 1), ("bert", 4), ("gpt2", 1), ("gpt2", 4)]
# Eager's smallest output change from masking is ~0.1 at these sizes; far above the tolerance.
MASK_EFFECT = 1e-2


class MaskedCase(NamedTuple):
    name: str
    model: torch.nn.Module
    ids: torch.Tensor
    mask: torch.Tensor
    graph: graphopt.Graph  # traced and optimized with the "default" pipeline


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-batch{b}" for n, b in CASES])
def case(request) -> MaskedCase:
    name, batch = request.param
    model, (ids, mask) = zoo.get(name, layers=2, seq=SEQ, batch=batch, masked=True)
    graph = graphopt.optimize(graphopt.trace(model, (ids, mask)), "default")
    return MaskedCase(name, model, ids, mask, graph)


def hidden_states(output) -> torch.Tensor:
    """last_hidden_state of a ModelOutput, a tuple or a list of numpy arrays (onnxruntime)."""
    first = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    return torch.as_tensor(first)


def positions_the_mask_affects(case: MaskedCase) -> torch.Tensor:
    """(batch, seq) bool: real tokens for BERT, padded positions for causal GPT-2."""
    real = case.mask.bool()
    return ~real if case.name == "gpt2" else real


def eager(case: MaskedCase, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hidden_states(case.model(case.ids, mask))


# ----------------------------------------------------------------------------- backends
def onnx_exported_runner(case: MaskedCase, folder) -> Callable:
    """torch.onnx.export (dynamo) of the eager model run by onnxruntime: the benchmarks'
    "onnxruntime" backend."""
    import onnxruntime as ort

    path = str(folder / f"{case.name}.onnx")
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [log.level for log in quiet]
    for log in quiet:  # missing torchvision ops, constant-folding misses: not ours
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(case.model, (case.ids, case.mask), path, dynamo=True,
                              verbose=False)
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask"]
    return lambda ids, mask: session.run(None, {names[0]: ids.numpy(), names[1]: mask.numpy()})


def make_runner(backend: str, case: MaskedCase, tmp_path_factory) -> Callable:
    if backend == "interpreter":
        return lambda ids, mask: graphopt.run(case.graph, ids, mask)
    if backend in ("native", "onnxruntime"):
        return graphopt.compile(case.graph, backend=backend)
    if backend == "torch":
        module = graphopt.to_torch(case.graph)
        return lambda ids, mask: module(ids, mask)
    return onnx_exported_runner(case, tmp_path_factory.mktemp("onnx"))


# -------------------------------------------------------------------------------- tests
def test_inputs_are_right_padded_and_reproducible(case):
    ids, mask = case.ids, case.mask
    assert mask.dtype == ids.dtype == torch.int64 and mask.shape == ids.shape
    real_lengths = mask.sum(1)
    assert (real_lengths >= 1).all() and (real_lengths < SEQ).all(), "every row padded"
    assert torch.equal(mask, (torch.arange(SEQ) < real_lengths[:, None]).long()), "right pad"
    assert len(set(real_lengths.tolist())) == len(real_lengths), "rows differ in length"
    config = getattr(case.model, "model", case.model).config  # unwrap zoo.AttentionMaskAdapter
    assert (ids[mask == 0] == (config.pad_token_id or 0)).all()
    batch = len(ids)
    assert torch.equal(mask, padding_mask(batch, SEQ))
    assert torch.equal(ids, token_ids(config.vocab_size, batch, SEQ, mask, config.pad_token_id))


def test_eager_output_depends_on_mask(case):
    affected = positions_the_mask_affects(case)
    change = (eager(case, case.mask) - eager(case, torch.ones_like(case.mask))).abs().amax(-1)
    assert float(change[affected].min()) > MASK_EFFECT


@pytest.mark.parametrize("backend", ["interpreter", "native", "onnxruntime", "torch",
                                     "torch.onnx.export"])
def test_backend_matches_eager_and_honours_mask(case, backend, tmp_path_factory):
    run = make_runner(backend, case, tmp_path_factory)
    outputs = {}
    for label, mask in (("padded", case.mask), ("all-ones", torch.ones_like(case.mask))):
        with torch.no_grad():
            outputs[label] = hidden_states(run(case.ids, mask))
        torch.testing.assert_close(outputs[label], eager(case, mask), rtol=RTOL, atol=ATOL,
                                   msg=lambda m, label=label: f"{label} mask: {m}")
    change = (outputs["padded"] - outputs["all-ones"]).abs().amax(-1)
    assert float(change[positions_the_mask_affects(case)].min()) > MASK_EFFECT
