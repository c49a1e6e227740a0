"""Attention over ``concat(cache, new)`` keys and values (native/lower/kv_segments.py): the
native plan reads the two pieces in place (no copy step) and computes what the concatenation
would; a concatenation something else needs whole is made after all. The single-query kernel
path (one query row: dot products and row updates instead of the GEMM) is covered here and by
the decode-shaped cases of test_native_kernels.py; both files rerun on the portable kernels
(test_native_kernels.py::test_portable_path).

The canonicalize rule that exposes the pattern in traced decoders (``slice-of-concat``) is
tested at the end.
"""

from __future__ import annotations

import pytest
import torch
from native_util import check_graph, randn

import graphopt


def _cache_graph(b, h, hk, past, new, e, mask: str, causal=False, extra=""):
    """attention(q, concat(past_k, k), concat(past_v, v), mask?) as IR text; ``extra`` adds
    lines before ``return`` (and to the returned values)."""
    s = past + new
    mask_in = {"bool": f", %m: bool[{b}, 1, {new}, {s}]", "float": f", %m: f32[{b}, 1, {new}, {s}]",
               "none": ""}[mask]
    text = f"""graph main(%q: f32[{b}, {h}, {new}, {e}], %pk: f32[{b}, {hk}, {past}, {e}], \
%k: f32[{b}, {hk}, {new}, {e}], %pv: f32[{b}, {hk}, {past}, {e}], \
%v: f32[{b}, {hk}, {new}, {e}]{mask_in}) {{
  %ck: f32[{b}, {hk}, {s}, {e}] = concat(%pk, %k) {{axis=2}}
  %cv: f32[{b}, {hk}, {s}, {e}] = concat(%pv, %v) {{axis=-2}}
  %y: f32[{b}, {h}, {new}, {e}] = attention(%q, %ck, %cv{", %m" if mask != "none" else ""}) \
{{enable_gqa={"true" if hk != h else "false"}, is_causal={"true" if causal else "false"}}}
{extra}  return %y{", %extra" if extra else ""}
}}"""
    feeds = [randn(b, h, new, e), randn(b, hk, past, e, seed=1), randn(b, hk, new, e, seed=2),
             randn(b, hk, past, e, seed=3), randn(b, hk, new, e, seed=4)]
    if mask == "bool":
        keep = randn(b, 1, new, s, seed=5) > -0.8
        keep[..., -1] = True  # every row sees its own token
        feeds.append(keep)
    elif mask == "float":
        feeds.append(randn(b, 1, new, s, seed=5))
    return graphopt.parse(text), feeds


def _kernels(fn) -> list[str]:
    return [step.kernel for step in fn.plan.steps]


@pytest.mark.parametrize("b,h,hk,past,new,e,mask", [
    (1, 12, 12, 192, 1, 64, "bool"),    # a GPT-2 decode step
    (2, 4, 2, 37, 1, 16, "float"),      # grouped-query heads, batch 2
    (1, 3, 3, 600, 1, 8, "bool"),       # the cache spans several key blocks
    (1, 2, 2, 9, 5, 12, "bool"),        # a prefill chunk after a cached prefix (GEMM path)
    (1, 2, 2, 0, 3, 8, "none"),         # an empty cache
])
def test_attention_reads_cache_and_new_keys_in_place(b, h, hk, past, new, e, mask):
    g, feeds = _cache_graph(b, h, hk, past, new, e, mask)
    fn = check_graph(g, feeds, threads=(1, 2))
    assert _kernels(fn) == ["attention"], _kernels(fn)  # no concatenation copies


@pytest.mark.parametrize("mask", ["bool", "float"])
@pytest.mark.parametrize("new", [1, 4])
def test_keys_outside_every_rows_visible_span_are_skipped_exactly(mask, new):
    """A decoder's cache holds max_length slots; the mask shows the filled ones (after left
    padding). The kernel narrows each key block to the span some row sees (csrc/rt_attention.cpp
    visible_span) and skips blocks no row sees: the same result as attending over all slots."""
    g, feeds = _cache_graph(2, 3, 3, 600, new, 8, mask)
    s = 600 + new
    keep = torch.zeros(2, 1, new, s, dtype=torch.bool)
    keep[0, :, :, 5:250] = True      # left padding, then 245 filled slots of a 600-slot cache
    keep[1, :, :, 0:40] = True
    for row in range(new):           # rows with different spans (a prefill chunk)
        keep[0, :, row, 300 + 50 * row: 320 + 50 * row] = True
        keep[:, :, row, 600 + row] = True  # each row sees its own token
    feeds[5] = keep if mask == "bool" else torch.where(keep, 0.0, float("-inf")) \
        + randn(2, 1, new, s, seed=6) * keep
    fn = check_graph(g, feeds, threads=(1, 2))
    assert _kernels(fn) == ["attention"]


def test_causal_attention_over_two_pieces():
    """The causal rule counts keys across both pieces (top-left aligned, as torch)."""
    g, feeds = _cache_graph(1, 2, 2, 4, 6, 8, "none", causal=True)
    fn = check_graph(g, feeds)
    assert _kernels(fn) == ["attention"]


def test_concatenation_that_is_also_an_output_is_made():
    g, feeds = _cache_graph(1, 2, 2, 7, 1, 8, "bool",
                            extra="  %extra: f32[1, 2, 8, 8] = neg(%ck)\n")
    fn = check_graph(g, feeds)
    assert "copy" in _kernels(fn)  # %ck has a reader besides attention: made whole


def test_piece_only_on_keys_is_joined_for_the_kernel():
    """Keys split but values not: the kernel reads whole tensors, the keys are joined where
    attention is lowered (builder.plain_ref -> join_segments)."""
    text = """graph main(%q: f32[1, 2, 1, 8], %pk: f32[1, 2, 5, 8], %k: f32[1, 2, 1, 8], \
%cv: f32[1, 2, 6, 8]) {
  %ck: f32[1, 2, 6, 8] = concat(%pk, %k) {axis=2}
  %y: f32[1, 2, 1, 8] = attention(%q, %ck, %cv)
  return %y
}"""
    feeds = [randn(1, 2, 1, 8), randn(1, 2, 5, 8, seed=1), randn(1, 2, 1, 8, seed=2),
             randn(1, 2, 6, 8, seed=3)]
    fn = check_graph(graphopt.parse(text), feeds)
    assert _kernels(fn).count("copy") == 2 and _kernels(fn)[-1] == "attention"


def test_traced_decoder_step_attends_without_copies(tiny_decoders):
    """A GPT-2 decoder step after the default pipeline: every layer's attention reads the
    cache in place; the step's new keys are returned as they are (slice-of-concat)."""
    decoder, graph = tiny_decoders["gpt2"].traced, tiny_decoders["gpt2"].optimized.graph
    # op-name check: the rule must leave no slice of a concatenation behind
    assert not [n for n in graph.nodes if n.op == "slice" and n.inputs[0].producer is not None
                and n.inputs[0].producer.op == "concat"]
    compiled = decoder.with_graph(graph).compile("native", threads=1)
    cache = compiled.new_cache(1)
    mask = torch.zeros(1, decoder.max_length + 1, dtype=torch.long)
    mask[0, :5] = 1
    mask[0, -1] = 1
    args = (torch.tensor([[3]]), torch.tensor([[5]]), mask, tuple(torch.randn_like(c)
                                                                 for c in cache))
    want = graphopt.run(decoder.graph, *args)
    got = compiled.fn(*args)
    for w, o in zip(want, got, strict=True):
        torch.testing.assert_close(o, w, rtol=1e-4, atol=1e-5)
    kernels = _kernels(compiled.fn)  # the plan of the shapes just run
    assert kernels.count("attention") == decoder.num_layers
    concat_copies = [s.name for s in compiled.fn.plan.steps
                     if s.kernel == "copy" and s.name.startswith("cat")]
    assert not concat_copies, concat_copies


# ------------------------------------------------------------------------ slice-of-concat
def _slice_graph(start: int, length: int, axis: int = 1) -> graphopt.Graph:
    return graphopt.parse(f"""graph main(%a: f32[2, 3], %b: f32[2, 4]) {{
  %c: f32[2, 7] = concat(%a, %b) {{axis=1}}
  %s: f32[{"2" if axis == 1 else "1"}, {length if axis == 1 else 7}] = slice(%c) \
{{axis={axis}, start={start}, end={start + length}, step=1}}
  %n: f32[2, 7] = neg(%c)
  return %s, %n
}}""")


@pytest.mark.parametrize("start,length,piece", [(0, 3, "a"), (3, 4, "b"), (1, 3, None),
                                                 (3, 3, None)])
def test_slice_of_concat_becomes_the_piece(start, length, piece):
    g = _slice_graph(start, length)
    out = graphopt.optimize(g, "canonicalize")
    # op-name check: whether the slice was replaced by a piece is the rule's outcome
    slices = [n for n in out.nodes if n.op == "slice"]
    if piece is None:
        assert slices
    else:
        assert not slices and out.outputs[0].name == piece
    a, b = randn(2, 3), randn(2, 4, seed=1)
    for want, got in zip(graphopt.run(g, a, b), graphopt.run(out, a, b), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_slice_of_concat_along_another_axis_stays():
    g = _slice_graph(0, 1, axis=0)
    out = graphopt.optimize(g, "canonicalize")
    assert [n for n in out.nodes if n.op == "slice"]  # op-name check: the slice must remain
