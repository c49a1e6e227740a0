"""Random graphs (tests/strategies.py: the op table's ops, motifs, symbolic dims, constants with
nan / inf / -0.0 / subnormals in every dtype, inputs with specials) run natively and by the
reference interpreter: the results agree, NaNs included. A node the runtime cannot lower is
fine (a typed NativeUnsupportedError); a different answer is not."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from native_util import flat
from strategies import graphs, random_inputs

import graphopt
from graphopt.ir.printer import print_graph
from graphopt.native import NativeUnsupportedError

EXAMPLES = int(200 * float(os.environ.get("GRAPHOPT_PROPERTY_SCALE", "1")))


def _agree(got: torch.Tensor, want: torch.Tensor) -> str | None:
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{got.dtype}{list(got.shape)} vs {want.dtype}{list(want.shape)}"
    if not want.dtype.is_floating_point:
        return None if torch.equal(got, want) else "integers differ"
    g, w = got.double(), want.double()
    if not torch.equal(torch.isnan(g), torch.isnan(w)):
        return "NaN positions differ"
    finite = torch.isfinite(w)
    if not torch.equal(g[~finite & ~torch.isnan(w)], w[~finite & ~torch.isnan(w)]):
        return "infinities differ"
    if not torch.equal(torch.isfinite(g), finite):
        return "finite / infinite positions differ"
    if finite.any():
        scale = max(1.0, float(w[finite].abs().max()))
        tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(want.dtype, 1e-4)
        err = float((g[finite] - w[finite]).abs().max())
        if err > tol * scale:
            return f"max abs error {err:.3g} (scale {scale:.3g})"
    return None


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(graph=graphs(), sizes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       seed=st.integers(0, 2**16), specials=st.booleans())
def test_native_agrees_with_the_reference_on_random_graphs(graph, sizes, seed, specials):
    note(print_graph(graph))
    args = random_inputs(graph, sizes, seed, specials)
    try:
        want = flat(graphopt.run(graph, *args))
    except graphopt.GraphoptError:
        assume(False)  # the reference itself rejects these inputs (e.g. integer division by 0)
    try:
        fn = graphopt.compile(graph, backend="native", threads=2, fallback="error")
        got = flat(fn(*args))
    except NativeUnsupportedError as exc:
        note(str(exc))
        assume(False)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        problem = _agree(g, w)
        assert problem is None, f"output {i}: {problem}"
