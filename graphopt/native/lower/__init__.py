"""Native lowerings, one module per op family; importing this package registers them all with
``register_lowering("native", op)``. A lowering is ``fn(ctx: LoweringContext) -> None``: it
reads inputs as views, asks for outputs and emits kernel steps (see ``builder.py``), or calls
``ctx.unsupported(reason)``."""

from graphopt.native.lower import (  # noqa: F401
    attention,
    conv,
    elementwise,
    indexing,
    linear,
    norm,
    pool,
    quant,
    reduce,
    shape,
)
