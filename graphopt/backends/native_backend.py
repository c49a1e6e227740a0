"""The native backend: ``graphopt.compile(graph, backend="native")`` (see graphopt/native/)."""

from __future__ import annotations

from typing import Any

from graphopt.compile import register_backend
from graphopt.errors import BackendOptionError
from graphopt.ir.graph import Graph
from graphopt.native.module import NativeModule


@register_backend("native")
def compile_native(graph: Graph, *, threads: int | None = None,
                   fallback: str | None = "reference",
                   sparse: str = "auto", layout: str = "auto", precision: str = "fp32",
                   codebook: str = "auto", spin_us: int | None = None,
                   **options: Any) -> NativeModule:
    """Backend factory: plan ``graph`` for graphopt's C++ runtime.

    Args:
        graph: the graph (not modified); static shapes are planned now, symbolic ones per
            distinct input shape at call time.
        threads: runtime threads (default ``torch.get_num_threads()``), checked against
            ``graphopt.limits.thread_budget()``.
        fallback: "reference" (default: a node without a native kernel runs through its
            reference implementation, with one NativeFallbackWarning naming the ops) or
            "error" (such nodes raise NativeUnsupportedError).
        sparse: "auto" (default): a linear whose weight carries a CSR record
            (``graphopt.prune.sparse``) runs the CSR kernel where the cost model says it beats
            the dense GEMM for its number of rows (or where a cached measurement on this
            machine says so); "measure": time each such layer both ways first (cached per
            machine, graphopt/native/lower/sparse_measure.py); "never"; "always" (every
            constant weight).
        layout: "auto" (default): 2-D convolutions, their pools and zero pads run in the
            channel-blocked layout (nChw16c, reorders only where a reader needs NCHW) when the
            runtime has the AVX-512 blocked kernels; "blocked" always; "nchw" never.
        precision: "fp32" (default) or "bf16": GEMMs against constant weights (linear layers,
            matmuls by a weight) round both operands to bfloat16 and sum in fp32 — on AMX tiles
            where the CPU has them; norms, softmax, attention and residual adds stay fp32.
        codebook: "auto" (default), "decode" or "lookup": codebook-shared weights
            (``graphopt.quantize(graph, "codebook")``) decoded to float32 when the plan is
            built, or read by linear layers through the codebook inside the product (a quarter
            of the weight memory, faster beyond the caches); "auto": the lookup for weights of
            8 MiB or more at up to 16 rows.
        spin_us: microseconds the runtime's idle helper threads spin after each parallel loop
            before sleeping (None: GRAPHOPT_NATIVE_SPIN_US, else 50; at most 1,000,000). A long
            spin (e.g. 50,000, about what onnxruntime's pool spins after a run) keeps helpers
            and caches warm between calls that come in bursts, at the price of a busy core.

    Raises:
        NativeUnsupportedError: with fallback="error", nodes without a native kernel (all
            listed).
        LoweringError: a malformed node (e.g. a convolution whose groups do not divide its
            channels), named with its op.
        ResourceLimitError: a thread count, a buffer or the planned arena over the budget.
        BackendOptionError: an unknown option (GraphoptError: a bad option value).
    """
    if options:
        raise BackendOptionError("the native backend takes threads, fallback, sparse, layout, "
                                 f"precision, codebook and spin_us, got {sorted(options)}")
    return NativeModule(graph, threads=threads, fallback=fallback, sparse=sparse, layout=layout,
                        precision=precision, codebook=codebook, spin_us=spin_us)
