"""Numeric comparison of graph outputs, shared by NumericCheckInstrument and bisect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graphopt.interpreter import flatten_inputs, run_flat
from graphopt.ir.graph import Graph


def run_outputs(
    graph: Graph, args: Sequence[Any], kwargs: dict | None = None
) -> list[torch.Tensor]:
    """The flat outputs of ``graph`` on the model inputs ``args``/``kwargs``."""
    return run_flat(graph, flatten_inputs(graph, tuple(args), kwargs))


@dataclass
class Drift:
    """How far outputs are from a reference: ``ok`` within tolerance; the worst output's errors."""

    ok: bool
    max_abs: float
    max_rel: float
    output: int | None
    detail: str

    def __str__(self) -> str:
        return self.detail


def compare_outputs(
    reference: Sequence[torch.Tensor], actual: Sequence[torch.Tensor], rtol: float, atol: float
) -> Drift:
    """Compare output lists elementwise: ``|a - r| <= atol + rtol * |r|`` (exact for ints/bools)."""
    if len(reference) != len(actual):
        return Drift(
            False,
            float("inf"),
            float("inf"),
            None,
            f"{len(actual)} outputs instead of {len(reference)}",
        )
    worst = Drift(True, 0.0, 0.0, None, "outputs match")
    for i, (r, a) in enumerate(zip(reference, actual)):
        if tuple(r.shape) != tuple(a.shape) or r.dtype != a.dtype:
            return Drift(
                False,
                float("inf"),
                float("inf"),
                i,
                f"output {i} is {a.dtype}{list(a.shape)}, expected {r.dtype}{list(r.shape)}",
            )
        if r.numel() == 0:
            continue
        if not r.dtype.is_floating_point:
            bad = int((r != a).sum())
            if bad:
                return Drift(
                    False,
                    float("inf"),
                    float("inf"),
                    i,
                    f"output {i}: {bad} of {r.numel()} elements differ (exact dtype {r.dtype})",
                )
            continue
        r64, a64 = r.double(), a.double()
        nan_mismatch = torch.isnan(r64) != torch.isnan(a64)
        diff = (r64 - a64).abs().nan_to_num(0.0)
        diff = torch.where(nan_mismatch, torch.full_like(diff, float("inf")), diff)
        max_abs = float(diff.max())
        rel = diff / r64.abs().clamp_min(1e-30)
        max_rel = float(rel.nan_to_num(0.0).max())
        allowed = atol + rtol * r64.abs().nan_to_num(0.0)
        ok = bool((diff <= allowed).all())
        if not ok or max_abs > worst.max_abs:
            detail = (
                f"output {i}: max abs error {max_abs:.3g}, max rel error {max_rel:.3g} "
                f"(rtol={rtol:g}, atol={atol:g})"
            )
            worst = Drift(ok and worst.ok, max_abs, max_rel, i, detail)
            if not ok:
                return worst
    return worst
