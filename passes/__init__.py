"""Built-in pass library of graphopt (installed as graphopt.passes).

One pass (or pass family) per module; the file name is the snake_case of the kebab-case pass
name. Importing this package registers every pass; add new modules to the import list below.
"""

from . import (  # noqa: F401  (registers the passes)
    attention_bf16,
    canonicalize,
    cse,
    dce,
    fold_batchnorm,
    fold_constants,
    fold_qdq,
    fold_transpose_matmul,
    fuse_activation,
    fuse_attention,
    fuse_gelu,
    fuse_layernorm,
    fuse_matmul_add,
    prune_channels,
    prune_magnitude,
    quantize_dynamic,
    quantize_static,
    quantize_weights,
    share_weights,
)
