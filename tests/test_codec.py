"""Deep Compression codecs (graphopt/codec, issue #17): weight sharing, sparse index coding
and canonical Huffman coding. Round trips are bit-exact; corrupt or truncated streams raise
CompressionError; the encodings reach the sizes the method promises on pruned, clustered
weights of a trained-looking (Laplacian) distribution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphopt.codec import (HuffmanCode, decode_sparse, encode_sparse, share_weights)
from graphopt.codec.codebook import centroid_gradients
from graphopt.errors import CompressionError


def _weights(*shape, seed=0):
    return np.random.default_rng(seed).laplace(0.0, 0.05, size=shape).astype(np.float32)


def _pruned(w, keep=0.1):
    threshold = np.quantile(np.abs(w), 1.0 - keep)
    return np.abs(w) >= threshold


# ----------------------------------------------------------------------------- codebooks
@pytest.mark.parametrize("bits", [1, 2, 5, 8, 10])
def test_codebook_decodes_to_its_centroids(bits):
    w = _weights(40, 30)
    cb = share_weights(w, bits)
    assert cb.centroids.shape == (2 ** bits,) and cb.centroids.dtype == np.float32
    assert cb.indices.dtype == (np.uint8 if bits <= 8 else np.uint16)
    np.testing.assert_array_equal(cb.decode(), cb.centroids[cb.indices])
    # every weight went to its nearest centroid
    nearest = np.abs(w[..., None] - cb.centroids).min(axis=-1)
    np.testing.assert_allclose(np.abs(w - cb.decode()), nearest, atol=1e-7)


def test_kmeans_beats_its_linear_start_and_more_bits_beat_fewer():
    w = _weights(200, 100)
    errors = []
    for bits in (2, 4, 6):
        start = share_weights(w, bits, iterations=0)
        fitted = share_weights(w, bits)
        e0 = float(np.square(w - start.decode()).mean())
        e1 = float(np.square(w - fitted.decode()).mean())
        assert e1 < e0
        errors.append(e1)
    assert errors[0] > errors[1] > errors[2]
    # linear initialization keeps the extremes represented (the paper's reason to use it)
    cb = share_weights(w, 4)
    assert cb.centroids[0] < np.quantile(w, 0.001) and cb.centroids[-1] > np.quantile(w, 0.999)


def test_pruned_weights_stay_exactly_zero():
    w = _weights(64, 64)
    keep = _pruned(w, 0.2)
    cb = share_weights(w, 4, mask=keep)
    decoded = cb.decode()
    assert (decoded[~keep] == 0.0).all()
    assert (decoded[keep] != 0.0).all()
    assert cb.stored_bits == int(keep.sum()) * 4 + 16 * 32


def test_centroid_gradients_sum_per_cluster():
    w = _weights(10, 8)
    keep = _pruned(w, 0.5)
    cb = share_weights(w, 3, mask=keep)
    grad = np.random.default_rng(1).standard_normal(w.shape).astype(np.float32)
    got = centroid_gradients(cb, grad)
    for c in range(8):
        want = grad[keep & (cb.indices == c)].sum()
        assert got[c] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("bad", [0, 17, 2.5])
def test_codebook_refuses_bad_bits(bad):
    with pytest.raises(CompressionError, match="bits"):
        share_weights(_weights(3, 3), bad)


def test_codebook_refuses_non_finite_weights():
    w = _weights(3, 3)
    w[1, 1] = np.nan
    with pytest.raises(CompressionError, match="NaN"):
        share_weights(w, 4)


# ------------------------------------------------------------------------------ sparse
@pytest.mark.parametrize("index_bits", [1, 3, 5, 8])
@pytest.mark.parametrize("keep", [0.0, 0.01, 0.1, 0.9, 1.0])
def test_sparse_round_trip(index_bits, keep):
    w = _weights(7, 301, seed=2)
    kept = _pruned(w, keep) if 0 < keep < 1 else np.full(w.shape, keep == 1.0)
    code = encode_sparse(w, kept, index_bits)
    assert code.gaps.max(initial=0) <= (1 << index_bits) - 1
    decoded = decode_sparse(code).reshape(w.shape)
    np.testing.assert_array_equal(decoded, np.where(kept, w, 0.0))
    fillers = code.values.size - int(kept.sum())
    assert fillers >= 0 and (code.values[code.gaps == (1 << index_bits) - 1].size >= fillers)


def test_sparse_fillers_cover_long_gaps():
    values = np.zeros(100, dtype=np.float32)
    values[[0, 40, 99]] = [1.0, 2.0, 3.0]
    code = encode_sparse(values, values != 0, 3)  # gaps of 39 and 58 zeros, 7 per entry
    # gap 39 -> 39 // 8 = 4 fillers + gap 7; gap 58 -> 7 fillers + gap 2
    assert code.values.size == 3 + 4 + 7
    np.testing.assert_array_equal(decode_sparse(code), values)


def test_corrupt_sparse_code_is_refused():
    values = np.arange(1, 11, dtype=np.float32)
    code = encode_sparse(values, values > 5, 4)
    broken = type(code)(code.gaps, code.values, 3, code.index_bits)  # announces 3 elements
    with pytest.raises(CompressionError, match="past the weight"):
        decode_sparse(broken)
    with pytest.raises(CompressionError, match="gaps for"):
        decode_sparse(type(code)(code.gaps[:-1], code.values, 10, 4))


# ----------------------------------------------------------------------------- Huffman
@pytest.mark.parametrize("distribution", ["skewed", "uniform", "single", "two"])
def test_huffman_round_trip(distribution):
    rng = np.random.default_rng(3)
    symbols = {"skewed": np.minimum(rng.geometric(0.3, 5000) - 1, 31),
               "uniform": rng.integers(0, 32, 5000),
               "single": np.full(700, 5),
               "two": rng.integers(3, 5, 999)}[distribution]
    code = HuffmanCode.for_symbols(symbols, 32)
    data, bits = code.encode(symbols)
    assert bits == code.encoded_bits(symbols) and len(data) == (bits + 7) // 8
    np.testing.assert_array_equal(code.decode(data, symbols.size, bits), symbols)
    if distribution == "uniform":
        assert bits <= symbols.size * 5 + 64
    if distribution == "skewed":
        entropy = -sum(p * np.log2(p) for p in np.bincount(symbols) / symbols.size if p > 0)
        assert bits / symbols.size < entropy + 1.0 and bits < symbols.size * 5 * 0.7


def test_huffman_codes_are_canonical_and_prefix_free():
    code = HuffmanCode.from_frequencies([40, 1, 1, 2, 4, 8, 16, 0])
    codes, lengths = code.codes(), code.lengths.astype(int)
    words = [format(int(c), f"0{n}b") for c, n in zip(codes, lengths) if n]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert lengths[7] == 0 and lengths[0] == 1
    order = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
    assert [int(codes[s]) << (lengths.max() - lengths[s]) for s in order] == sorted(
        int(codes[s]) << (lengths.max() - lengths[s]) for s in order)


def test_huffman_lengths_are_limited():
    freqs = [2 ** i for i in range(30)]  # an unlimited code would be 29 bits deep
    code = HuffmanCode.from_frequencies(freqs, max_length=12)
    assert int(code.lengths.max()) <= 12
    assert sum(2.0 ** -int(n) for n in code.lengths if n) <= 1.0
    symbols = np.repeat(np.arange(30), 3)
    data, bits = code.encode(symbols)
    np.testing.assert_array_equal(code.decode(data, symbols.size, bits), symbols)


def test_corrupt_huffman_streams_are_refused():
    symbols = np.random.default_rng(4).integers(0, 16, 400)
    code = HuffmanCode.for_symbols(symbols, 16)
    data, bits = code.encode(symbols)
    with pytest.raises(CompressionError, match="truncated"):
        code.decode(data[: len(data) // 2], symbols.size, bits)
    with pytest.raises(CompressionError):
        code.decode(data, symbols.size + 5, bits)
    with pytest.raises(CompressionError, match="no code"):
        code.encode(np.array([16]))
    bad = HuffmanCode(np.full(16, 1, dtype=np.uint8))  # 16 one-bit codes: not a code
    with pytest.raises(CompressionError, match="Kraft"):
        bad.codes()


def test_deep_compression_stages_shrink_a_pruned_layer():
    # A 300x784 layer (LeNet-300-100's first) pruned to 8%, shared at 5 bits, coded: the
    # paper's pipeline reaches tens of times smaller than float32.
    w = _weights(300, 784, seed=5)
    kept = _pruned(w, 0.08)
    cb = share_weights(w, 5, mask=kept)
    sparse = encode_sparse(cb.indices, kept, 5)
    index_code = HuffmanCode.for_symbols(sparse.values, 32)
    gap_code = HuffmanCode.for_symbols(sparse.gaps, 32)
    total_bits = (index_code.encoded_bits(sparse.values) + gap_code.encoded_bits(sparse.gaps)
                  + 32 * 32 + 2 * 32 * 8)
    ratio = w.size * 32 / total_bits
    assert ratio > 25, ratio
    decoded = decode_sparse(type(sparse)(sparse.gaps, sparse.values, w.size, 5))
    np.testing.assert_array_equal(decoded.reshape(w.shape), np.where(kept, cb.indices, 0))


# -------------------------------------------------------------------------- .gcm weights
def _layers():
    fc1, fc2 = _weights(300, 784, seed=6), _weights(100, 300, seed=7)
    fc1[~_pruned(fc1, 0.08)] = 0.0
    fc2[~_pruned(fc2, 0.09)] = 0.0
    return {"fc1": fc1, "fc2": fc2, "bias": _weights(100, seed=8)}


def test_weights_file_round_trip_is_exact(tmp_path):
    from graphopt.codec import load_weights, save_weights

    layers = _layers()
    path = tmp_path / "m.gcm"
    reports = save_weights(path, layers, bits={"fc1": 5, "fc2": 5}, index_bits=5)
    loaded = load_weights(path)
    assert set(loaded) == set(layers)
    np.testing.assert_array_equal(loaded["bias"], layers["bias"])  # dense: as written
    for name in ("fc1", "fc2"):
        want = share_weights(layers[name], 5, mask=layers[name] != 0).decode()
        np.testing.assert_array_equal(loaded[name], want)
        assert (loaded[name][layers[name] == 0] == 0).all()
    by_name = {r.name: r for r in reports}
    assert by_name["fc1"].ratio > 30 and by_name["bias"].ratio == 1.0
    total_dense = sum(w.size * 4 for w in layers.values())
    assert total_dense / path.stat().st_size > 25


def test_corrupt_or_truncated_weights_files_are_refused(tmp_path):
    from graphopt.codec import load_weights, save_weights

    path = tmp_path / "m.gcm"
    save_weights(path, _layers(), bits=4)
    good = path.read_bytes()
    reference = load_weights(path)
    rng = np.random.default_rng(9)
    for offset in [0, 5, 10, 14, 20, 200, *rng.integers(0, len(good), 40)]:
        bad = bytearray(good)
        bad[int(offset)] ^= 0x5A
        path.write_bytes(bytes(bad))
        try:
            load_weights(path)
        except CompressionError:
            continue
        # a flip in alignment padding changes nothing that is read: the data must be intact
        loaded = load_weights(path)
        for name, array in reference.items():
            np.testing.assert_array_equal(loaded[name], array)
    for cut in (3, 16, 100, len(good) // 2, len(good) - 9):
        path.write_bytes(good[:cut])
        with pytest.raises(CompressionError):
            load_weights(path)
    path.write_bytes(b"PK\x03\x04" + good[4:])
    with pytest.raises(CompressionError, match="not a graphopt compressed model"):
        load_weights(path)


# --------------------------------------------------------------------------- index streams
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_index_streams_round_trip_bit_exact(data):
    from graphopt.codec.index_stream import decode_indices, encode_indices

    alphabet = data.draw(st.integers(1, 300), label="alphabet")
    size = data.draw(st.integers(0, 3000), label="size")
    density = data.draw(st.floats(0.0, 1.0), label="density")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    symbols = np.where(rng.random(size) < density, rng.integers(0, alphabet, size), 0)
    width = data.draw(st.one_of(st.none(), st.integers(1, 8)), label="index_bits")
    entry, sections = encode_indices("w", symbols, alphabet, width)
    assert list(sections) == ["w"]
    np.testing.assert_array_equal(decode_indices("w", entry, sections, size), symbols)
    if width is None:  # the automatic gap width is the smallest of all widths
        best = min(len(encode_indices("w", symbols, alphabet, b)[1]["w"]) for b in range(1, 9))
        assert len(sections["w"]) == best


def test_index_stream_entries_that_disagree_with_the_section_are_refused():
    from graphopt.codec.index_stream import decode_indices, encode_indices

    symbols = np.array([0, 0, 3, 1, 0, 0, 0, 2] * 50)
    entry, sections = encode_indices("w", symbols, 4)
    for key, value in [("entries", 10**6), ("symbol_nbits", -1), ("alphabet", 0),
                       ("index_bits", 40), ("gap_nbits", entry["gap_nbits"] + 64)]:
        with pytest.raises(CompressionError):
            decode_indices("w", {**entry, key: value}, sections, symbols.size)
    with pytest.raises(CompressionError, match="missing"):
        decode_indices("w", entry, {}, symbols.size)
    with pytest.raises(CompressionError):
        decode_indices("w", entry, {"w": sections["w"][:-1]}, symbols.size)
    with pytest.raises(CompressionError):
        encode_indices("w", np.array([5]), 4)


def test_native_huffman_decoder_agrees_with_the_python_reference():
    """The C++ loop (csrc/huffman_decode.cpp) and the Python one decode the same symbols and
    refuse the same corrupt streams with the same message."""
    from graphopt.codec import huffman

    # the extension is part of every build (make venv): without it this must fail, not skip
    assert huffman._native_decoder() is not None, "graphopt._C has no huffman_decode"
    rng = np.random.default_rng(3)

    def both(code, data, count, nbits):
        results = []
        for use_native in (True, False):
            original = huffman._native_decoder
            if not use_native:
                huffman._native_decoder = lambda: None
            try:
                results.append(code.decode(data, count, nbits))
            except CompressionError as exc:
                results.append(str(exc))
            finally:
                huffman._native_decoder = original
        return results

    for trial in range(40):
        alphabet = int(rng.integers(1, 200))
        symbols = rng.geometric(0.3, size=int(rng.integers(1, 3000))) % alphabet
        code = HuffmanCode.for_symbols(symbols, alphabet)
        data, nbits = code.encode(symbols)
        native, python = both(code, data, symbols.size, nbits)
        np.testing.assert_array_equal(native, symbols)
        np.testing.assert_array_equal(python, symbols)
        corrupt = bytearray(data)
        corrupt[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        for args in [(bytes(corrupt), symbols.size, nbits), (data, symbols.size + 1, nbits),
                     (data, symbols.size, max(nbits - 3, 0)), (data[:-1], symbols.size, nbits)]:
            native, python = both(code, *args)
            if isinstance(native, str) or isinstance(python, str):
                assert native == python
            else:
                np.testing.assert_array_equal(native, python)
