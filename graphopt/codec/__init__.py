"""Deep Compression encodings of weights (Han et al., 2016), as plain array codecs.

* ``share_weights`` (codebook.py): a per-layer codebook of 2**bits shared values (k-means over
  the weights, linear initialization over their range, as the paper finds best), the weight
  stored as indices into it. Pruned zeros stay exactly zero outside the codebook.
* ``encode_sparse`` (sparse_index.py): the non-zeros of a pruned weight with the run of zeros
  before each stored in a fixed small width, a filler entry when a run overflows it.
* ``HuffmanCode`` (huffman.py): canonical, length-limited Huffman coding of the index streams
  (the decoding loop is native when the extension is built, csrc/huffman_decode.cpp).

* ``save_weights`` / ``load_weights`` (weights_file.py over container.py): named weights in a
  ``.gcm`` file (versioned header, JSON directory, CRC-32 per section, no pickle).

The codecs know arrays only (no IR): the layers above build the compressed model and the IR
tensor encoding on them. Every decode is bit-exact, and a corrupt stream or file raises
``CompressionError`` naming what is wrong.
"""

from graphopt.codec.codebook import Codebook, share_weights
from graphopt.codec.huffman import HuffmanCode
from graphopt.codec.sparse_index import SparseCode, decode_sparse, encode_sparse
from graphopt.codec.weights_file import WeightReport, load_weights, save_weights

__all__ = ["Codebook", "HuffmanCode", "SparseCode", "WeightReport", "decode_sparse",
           "encode_sparse", "load_weights", "save_weights", "share_weights"]
