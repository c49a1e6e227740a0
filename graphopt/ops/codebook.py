"""Weight sharing in the IR: a weight stored as small indices into a codebook (Deep Compression).

``codebook_decode(indices, centroids)`` is the tensor encoding of a shared weight: ``indices``
(uint8 or uint16, the weight's shape) and ``centroids`` (float, ``[k]``) are two constants, and
the op reads ``0.0`` for index 0 (a pruned weight) and ``centroids[i - 1]`` for index ``i >= 1``.
Reserving index 0 for the exact zero keeps pruned weights exactly zero through centroid
fine-tuning: the zero is not a trainable table entry.

The op is what makes the encoding visible to every layer:

* **Fine-tuning** (``graphopt.finetune``) trains ``centroids`` like any floating constant; the
  backward of the lookup sums the gradients of the weights that share a centroid, which is the
  paper's centroid update, with no special code.
* **Constant folding** keeps it (trait ``WEIGHT_STORAGE``): folding would expand the indices back
  into a dense float weight and undo the compression.
* **Backends** decode it: the native runtime at plan time (load), onnxruntime through
  Concat + Gather, torch by indexing.
* **The compressed file** (``graphopt.compress``) stores ``indices`` with sparse index coding and
  Huffman codes, and ``graphopt.load`` rebuilds the same two constants (bit-exact).
"""

from __future__ import annotations

import torch

from graphopt.errors import TypeInferenceError
from graphopt.ir.dtypes import DType
from graphopt.ir.types import TensorType
from graphopt.ops._infer import expect_rank
from graphopt.ops.registry import CODEBOOK, PURE, WEIGHT_STORAGE, register_op

INDEX_DTYPES = (DType.uint8, DType.uint16)


def _codebook_infer(types, attrs):
    indices, centroids = types
    if indices.dtype not in INDEX_DTYPES:
        raise TypeInferenceError(f"codebook_decode indices must be uint8 or uint16, got {indices}")
    expect_rank(centroids, 1, "codebook_decode centroids")
    if not centroids.dtype.is_floating:
        raise TypeInferenceError(f"codebook_decode centroids must be floating, got {centroids}")
    return TensorType(indices.shape, centroids.dtype)


@register_op("codebook_decode", inputs=("indices", "centroids"),
             traits={PURE, WEIGHT_STORAGE, CODEBOOK}, flops_per_element=0, infer=_codebook_infer)
def codebook_decode(indices, centroids):
    """``0.0`` where ``indices == 0``, else ``centroids[indices - 1]`` (differentiable in the
    centroids: their gradient is the sum over the weights that read them).

    An index past the codebook raises IndexError (the lookup is bounds-checked)."""
    table = torch.cat([centroids.new_zeros(1), centroids])
    return table[indices.to(torch.int64)]
