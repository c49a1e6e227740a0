"""Native lowerings, one module per op family; importing this package registers them all with
``register_lowering("native", op)``. A lowering is ``fn(ctx: LoweringContext) -> None``: it
reads inputs as views, asks for outputs and emits kernel steps (see ``builder.py``), or calls
``ctx.unsupported(reason)``.

Every op of the registry has a native lowering or an entry in ``NOT_LOWERED`` saying why not
(tests/test_native_coverage.py enforces it); nodes of those ops run through their reference
implementation (``fallback="reference"``, the default, warns once naming them).
"""

from graphopt.native.lower import (  # noqa: F401
    attention,
    conv,
    einsum,
    elementwise,
    generate,
    indexing,
    linear,
    loss,
    norm,
    pool,
    quant,
    quant_dynamic,
    reduce,
    resample,
    rnn,
    scan,
    scatter,
    shape,
    vision,
)

# op -> why it has no native lowering (e.g. "training only: ..."); empty since issue #21
# lowered the last ones. An op added to the registry needs a lowering or an entry here.
NOT_LOWERED: dict[str, str] = {}
