"""Error-compensating rounding of weight-only blocks (GPTQ, Frantar et al. 2022).

Round-to-nearest (``quantize_blocks``) rounds every weight on its own. GPTQ rounds the input
columns of a layer one at a time and moves each column's rounding error onto the columns not yet
rounded, weighted by how the layer's inputs correlate: it minimizes ``||W X - Q X||^2`` over the
calibration inputs ``X`` (greedily, column by column, with the inverse Hessian ``(X X^T)^-1``)
instead of ``||W - Q||^2``. The result has exactly ``quantize_blocks``'s format and semantics
(symmetric blocks, zero point ``2**(bits-1)``, one scale per block of K), so every kernel and
lowering runs it unchanged; only which codes are chosen differs.

Why it is sound: the codes and scales are an ordinary block quantization of *some* weights; the
graph computes exactly what the op's reference says for them. Whether they are closer to the
float layer on real inputs is what the calibration data decides, and what tests and the
decoding benchmark measure against round-to-nearest.

Order and scales: columns are rounded in decreasing order of their input's energy (the
Hessian's diagonal; the authors' "act order" option): the largest inputs' errors are the costliest, and
rounded first they can still be moved onto every other column. Reordered columns of one block
are no longer rounded together, so each block keeps round-to-nearest's scale (``amax / qmax``
of the float weights, "static groups"); only the codes differ from round-to-nearest.

Calibration size: the Hessian needs at least K input rows per layer to have full rank (layers
with fewer round to nearest, with a warning), and in practice several times that: a Hessian
fitted to a few times K rows moves errors onto directions the calibration rows happen to lack
(measured on the tests' tiny decoders: 2 x K rows did worse than round-to-nearest, 4 x K and
more better). The paper calibrates on 128 sequences of 2048 tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from graphopt.errors import QuantizationError
from graphopt.ir.graph import Graph, Node
from graphopt.quant.weight_only import quantize_blocks

# Dampening added to the Hessian's diagonal, as a fraction of its mean (the paper's 1%): keeps
# the Cholesky factorization defined when inputs are correlated or some never vary.
DAMP = 0.01
# Columns rounded between two updates of the remaining columns (the paper's lazy batches).
LAZY_COLUMNS = 128


class InputHessian:
    """``sum x x^T`` over every row of a layer's inputs seen in calibration (float64).

    Rows are buffered and added ``FLUSH_ROWS`` at a time: one decode step brings one row, and
    updating a K x K sum per row would cost K^2 memory traffic each (1.8 GB a step for GPT-2's
    MLP inputs). Each batch's product is float32 (exact enough: its sum is float64)."""

    FLUSH_ROWS = 512

    def __init__(self, k: int):
        self._sum = torch.zeros(k, k, dtype=torch.float64)
        self._pending: list[torch.Tensor] = []
        self._pending_rows = 0
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        if not torch.isfinite(rows).all():
            raise QuantizationError("non-finite layer input")
        self._pending.append(rows.clone())
        self._pending_rows += rows.shape[0]
        self.rows += rows.shape[0]
        if self._pending_rows >= self.FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            batch = torch.cat(self._pending)
            self._sum += (batch.T @ batch).to(torch.float64)
            self._pending, self._pending_rows = [], 0

    @property
    def sum(self) -> torch.Tensor:
        self._flush()
        return self._sum

    @sum.setter
    def sum(self, value: torch.Tensor) -> None:
        self._pending, self._pending_rows = [], 0
        self._sum = value


def input_hessians(graph: Graph, nodes: Sequence[Node], calibration: Iterable[tuple],
                   progress: bool | None = None) -> dict[str, InputHessian]:
    """Node name -> the Hessian of its input (``nodes``' first inputs) over ``calibration``,
    run through the reference interpreter one item at a time. Layers that read the same input
    (q, k, v projections) share one accumulation."""
    from graphopt.quant.static import run_calibration

    by_value: dict[str, InputHessian] = {}
    for node in nodes:
        x = node.inputs[0]
        by_value.setdefault(x.name, InputHessian(int(x.shape[-1])))

    def observe(value, tensor: torch.Tensor) -> None:
        target = by_value.get(value.name)
        if target is not None:
            try:
                target.add(tensor)
            except QuantizationError as exc:
                where = value.producer.describe() if value.producer is not None else "an input"
                raise QuantizationError(f"gptq calibration: %{value.name} ({where}): {exc}") \
                    from None

    # Streamed (one item's activations live at a time): a generator's items may share buffers.
    run_calibration(graph, calibration, lambda index: observe, progress,
                    "rounding='gptq' needs calibration data: at least one argument tuple")
    return {node.name: by_value[node.inputs[0].name] for node in nodes}


def gptq_hessians(graph: Graph, nodes: Sequence[Node], calibration: Iterable[tuple],
                  progress: bool | None = None) -> dict[str, InputHessian]:
    """``input_hessians`` of the layers calibration saw at least K input rows of; the others
    (a Hessian of lower rank than the layer's width fits the calibration rows, not the inputs
    the layer will see) round to nearest, with a warning that names them."""
    import warnings

    hessians = input_hessians(graph, nodes, calibration, progress)
    short = [name for name, h in hessians.items() if h.rows < h.sum.shape[0]]
    if short:
        warnings.warn(
            f"rounding='gptq': calibration gave {len(short)} layer(s) fewer input rows than "
            f"inputs ({', '.join(short[:4])}{', ...' if len(short) > 4 else ''}); they round "
            f"to nearest. Pass more calibration items to compensate them too.", stacklevel=3)
    return {name: h for name, h in hessians.items() if name not in short}


def _inverse_hessian_factor(hessian: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of the dampened inverse Hessian (what the column updates use)."""
    h = hessian.clone()
    h[dead, dead] = 1.0
    h.diagonal().add_(DAMP * float(h.diagonal().mean()))
    try:
        inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(inverse, upper=True)
    except RuntimeError as exc:  # torch.linalg.LinAlgError: not positive definite
        raise QuantizationError(f"gptq: the layer's input Hessian is not positive definite "
                                f"after dampening ({exc}); use rounding='nearest'") from None


def _round_columns(w: torch.Tensor, factor: torch.Tensor, qmax: int, scales: torch.Tensor,
                   group: torch.Tensor) -> torch.Tensor:
    """GPTQ's column loop on ``w`` [N, K] (float64, columns in processing order, updated in
    place): column i rounds on ``scales[:, group[i]]``; returns the centred integer codes."""
    n, k = w.shape
    codes = torch.zeros(n, k, dtype=torch.int64)
    for start in range(0, k, LAZY_COLUMNS):
        end = min(k, start + LAZY_COLUMNS)
        errors = torch.zeros(n, end - start, dtype=torch.float64)
        for i in range(start, end):
            scale = scales[:, group[i]]
            q = torch.clamp(torch.round(w[:, i] / scale), -qmax, qmax)
            codes[:, i] = q.to(torch.int64)
            error = (w[:, i] - q * scale) / factor[i, i]
            w[:, i + 1:end] -= error[:, None] * factor[i, i + 1:end][None, :]
            errors[:, i - start] = error
        w[:, end:] -= errors @ factor[start:end, end:]
    return codes


def gptq_blocks(w: np.ndarray, hessian: InputHessian, bits: int = 4,
                block_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` float -> (codes, scales) in ``quantize_blocks``'s format, the codes chosen by
    GPTQ against ``hessian`` (module doc)."""
    n, k = w.shape
    if hessian.sum.shape != (k, k):
        raise QuantizationError(f"gptq: weight [{n}, {k}] but a Hessian of inputs of width "
                                f"{hessian.sum.shape[0]}")
    h = hessian.sum / max(hessian.rows, 1)
    dead = h.diagonal() == 0
    w = np.asarray(w, np.float32).copy()
    w[:, dead.numpy()] = 0.0  # inputs that are always zero: any weight is exact there
    _, scales = quantize_blocks(w, bits, block_size)  # round-to-nearest's scales (module doc)
    # Columns of the largest inputs first: their errors move onto many columns still free.
    order = torch.argsort(h.diagonal(), descending=True, stable=True)
    work = torch.from_numpy(w.astype(np.float64))[:, order].contiguous()
    factor = _inverse_hessian_factor(h[order][:, order], dead[order])
    centred = torch.empty(n, k, dtype=torch.int64)
    centred[:, order] = _round_columns(work, factor, 2 ** (bits - 1) - 1,
                                       torch.from_numpy(scales.astype(np.float64)),
                                       order // block_size)
    blocks = scales.shape[1]
    padded = np.zeros((n, blocks * block_size), np.int64)
    padded[:, :k] = centred.numpy()
    packed = (padded + 2 ** (bits - 1)).astype(np.uint8).reshape(n, blocks, block_size)
    if bits == 4:
        packed = packed[..., 0::2] | (packed[..., 1::2] << 4)
    return np.ascontiguousarray(packed), scales


__all__ = ["DAMP", "InputHessian", "gptq_blocks", "gptq_hessians", "input_hessians"]
