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
    reduce,
    resample,
    rnn,
    scan,
    scatter,
    shape,
    vision,
)

NOT_LOWERED: dict[str, str] = {
    "dynamic_quantize_linear": "not yet (issue #21): runtime min / max scale and zero point",
    "qconv_dynamic": "not yet (issue #21): quantize-on-the-fly convolution (static qconv2d is "
                     "lowered)",
    "requantize_linear": "not yet (issue #21): int8 -> int8 rescale",
}
