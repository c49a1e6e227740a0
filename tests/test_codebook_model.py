"""Codebook weight sharing in the IR (issue #17): the codebook_decode op, the codebook
quantization mode / share-weights pass, centroid fine-tuning through graphopt.finetune, and the
compressed model file (graphopt.compress / graphopt.load / graphopt inspect) on a real trained
model (the digits CNN)."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import graphopt
from graphopt.backends.compressed_model import inspect_compressed, load_compressed
from graphopt.codec import share_weights
from graphopt.codec.codebook import centroid_gradients
from graphopt.errors import CompressionError, GraphoptError, ParseError


def _decode_nodes(graph):
    return [n for n in graph.nodes if n.op == "codebook_decode"]


@pytest.fixture(scope="module")
def cnn_graph(digits_cnn, digits_data):
    model = copy.deepcopy(digits_cnn)
    batch = torch.export.Dim("batch", min=1, max=1024)
    graph = graphopt.trace(model, (digits_data[2][:4],), dynamic_shapes=({0: batch},))
    return graphopt.optimize(graph, "default")


@pytest.fixture(scope="module")
def shared_cnn(cnn_graph):
    pruned = graphopt.prune(cnn_graph, "magnitude", sparsity=0.7)
    return pruned, graphopt.quantize(pruned, "codebook", bits=4, conv_bits=6)


def _accuracy(graph, x, y) -> float:
    return float((graphopt.run(graph, x).argmax(1) == y).float().mean())


# ------------------------------------------------------------------------------------ the op
def test_codebook_decode_reads_zero_for_index_zero():
    g = graphopt.parse("""graph g(%i: u8[2, 3], %c: f32[3]) {
      %w: f32[2, 3] = codebook_decode(%i, %c)
      return %w
    }""")
    idx = torch.tensor([[0, 1, 2], [3, 0, 3]], dtype=torch.uint8)
    out = graphopt.run(g, idx, torch.tensor([-1.5, 0.25, 2.0]))
    np.testing.assert_array_equal(out.numpy(), [[0.0, -1.5, 0.25], [2.0, 0.0, 2.0]])
    with pytest.raises(GraphoptError, match="index"):
        graphopt.run(g, torch.full((2, 3), 4, dtype=torch.uint8), torch.zeros(3))
    with pytest.raises(GraphoptError, match="index"):  # the native step checks it too
        graphopt.compile(g, backend="native")(torch.full((2, 3), 4, dtype=torch.uint8),
                                              torch.zeros(3))


@pytest.mark.parametrize("text, message", [
    ("%i: i64[4], %c: f32[3]", "uint8 or uint16"),
    ("%i: u8[4], %c: f32[3, 1]", "rank"),
    ("%i: u8[4], %c: i32[3]", "floating"),
])
def test_codebook_decode_checks_its_operand_types(text, message):
    with pytest.raises(ParseError, match=message):
        graphopt.parse(f"graph g({text}) {{\n  %w: f32[4] = codebook_decode(%i, %c)\n"
                       "  return %w\n}")


# ---------------------------------------------------------------- the codebook mode and pass
def test_codebook_mode_shares_every_weight_and_keeps_pruned_zeros(shared_cnn):
    pruned, shared = shared_cnn
    decodes = _decode_nodes(shared)
    assert len(decodes) == 4  # two convs, two linears
    for node in decodes:
        indices, centroids = node.inputs
        weight_name = indices.name[: -len(".indices")]
        original = pruned.constants[weight_name].data
        conv = original.ndim == 4
        assert centroids.data.shape == ((64,) if conv else (16,))
        assert indices.dtype == graphopt.DType.uint8
        # index 0 exactly where pruning left a zero; the rest is the k-means assignment
        np.testing.assert_array_equal(indices.data == 0, original == 0)
        book = share_weights(original, 6 if conv else 4, mask=original != 0)
        np.testing.assert_array_equal(centroids.data, book.centroids)
        np.testing.assert_array_equal(indices.data[original != 0],
                                      book.indices[original != 0] + 1)
        assert weight_name not in shared.constants  # the float weight is gone
    shared.verify()
    # folding keeps the encoding (it would store the float weights again)
    assert len(_decode_nodes(graphopt.optimize(shared, "default"))) == 4


def test_shared_model_is_accurate_and_runs_on_every_backend(shared_cnn, digits_data):
    pruned, shared = shared_cnn
    x_test, y_test = digits_data[2], digits_data[3]
    assert _accuracy(shared, x_test, y_test) > _accuracy(pruned, x_test, y_test) - 0.02
    x = x_test[:16]
    expected = graphopt.run(shared, x).numpy()
    assert np.abs(expected).max() > 1.0  # real logits, not a degenerate model
    for backend in ("native", "onnxruntime"):
        out = graphopt.compile(shared, backend=backend)(x)
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(graphopt.to_torch(shared)(x).detach().numpy(), expected,
                               rtol=1e-4, atol=1e-4)


def test_share_weights_pass_matches_the_mode_and_honours_exclude(cnn_graph):
    by_pass = graphopt.optimize(cnn_graph, "share-weights{bits=4,conv_bits=6}")
    by_mode = graphopt.quantize(cnn_graph, "codebook", bits=4, conv_bits=6)
    assert str(by_pass) == str(by_mode)
    kept_float = graphopt.optimize(cnn_graph, "share-weights{exclude=['*conv*', '1.*']}")
    names = {n.inputs[0].name for n in _decode_nodes(kept_float)}
    assert names and all("conv" not in n and not n.startswith("1.") for n in names)


def test_codebook_mode_falls_back_to_float_within_an_error_budget(cnn_graph, digits_data):
    calibration = [(digits_data[2][i: i + 8],) for i in range(0, 64, 8)]
    q, report = graphopt.quantize(cnn_graph, "codebook", bits=1, conv_bits=1,
                                  calibration=calibration, error_budget=1e-3, report=True)
    assert report.error is not None and report.error <= 1e-3
    assert len(_decode_nodes(q)) < 4 and any(not r.quantized for r in report.layers)


# ----------------------------------------------------------------------- centroid fine-tuning
def _single(node):
    """A graph returning just ``node``'s decoded weight."""
    indices, centroids = node.inputs
    text = (f"graph w() {{\n  const %i: {indices.type}\n  const %c: {centroids.type}\n"
            f"  %w: {node.outputs[0].type} = codebook_decode(%i, %c)\n  return %w\n}}")
    return graphopt.parse(text, {"i": indices.data, "c": centroids.data})


def _dense_weight_gradient(graph, node, x, y) -> np.ndarray:
    """d loss / d weight for ``node``'s weight used as a plain float constant."""
    dense = graph.clone()
    twin = next(n for n in dense.nodes if n.outputs[0].name == node.outputs[0].name)
    const = dense.add_constant(graphopt.run(_single(node)).numpy(), "dense_weight")
    for user, slot in list(twin.outputs[0].uses):
        user.set_input(slot, const)
    dense.erase_node(twin)
    module = graphopt.to_torch(dense)
    weight = next(p for name, p in module.named_parameters() if "dense_weight" in name)
    (grad,) = torch.autograd.grad(F.cross_entropy(module(x), y), [weight])
    return grad.numpy()


def test_finetune_trains_centroids_by_the_summed_gradients_of_their_weights(shared_cnn,
                                                                           digits_data):
    from graphopt.codec.codebook import Codebook

    _, shared = shared_cnn
    x, y = digits_data[0][:64], digits_data[1][:64]
    lr = 1e-3
    tuned = graphopt.finetune(shared, [(x, y)], loss=F.cross_entropy, epochs=1, lr=lr,
                              progress=False)
    for node in _decode_nodes(shared):
        indices, centroids = node.inputs
        np.testing.assert_array_equal(tuned.constants[indices.name].data, indices.data)
        # the paper's centroid gradient: the dense weight's gradient summed per cluster
        kept = indices.data != 0
        book = Codebook(centroids.data, (indices.data.astype(np.int64) - 1).clip(0), kept, 1)
        summed = centroid_gradients(book, _dense_weight_gradient(shared, node, x, y))
        moved = tuned.constants[centroids.name].data - centroids.data
        big = np.abs(summed) > 1e-3 * np.abs(summed).max()
        assert big.sum() >= 4
        # Adam's first step moves each centroid by lr against the sign of its gradient
        np.testing.assert_array_equal(np.sign(moved[big]), -np.sign(summed[big]))
        np.testing.assert_allclose(np.abs(moved[big]), lr, rtol=0.05)
    for node in _decode_nodes(tuned):  # pruned weights stay exactly zero after training
        out = graphopt.run(_single(node)).numpy()
        np.testing.assert_array_equal(out == 0, node.inputs[0].data == 0)


# ------------------------------------------------------------------------- the .gcm model file
def test_compress_and_load_round_trip_bit_exact(shared_cnn, tmp_path, digits_data):
    _, shared = shared_cnn
    path = tmp_path / "cnn.gcm"
    written = graphopt.compress(shared, path)
    assert written.file_bytes == os.path.getsize(path)
    loaded = graphopt.load(path)
    assert str(loaded) == str(shared)
    for name, value in shared.constants.items():
        np.testing.assert_array_equal(loaded.constants[name].data, value.data)
        assert loaded.constants[name].dtype == value.dtype
    x = digits_data[2][:8]
    np.testing.assert_array_equal(graphopt.run(loaded, x).numpy(), graphopt.run(shared, x).numpy())
    # the indices are Huffman-coded: far below their float32 weights, and below 8 bits each
    by_name = {c.name: c for c in written.constants}
    for node in _decode_nodes(shared):
        record = by_name[node.inputs[0].name]
        assert record.encoding == "indices"
        assert record.stored_bytes * 8 < node.inputs[0].data.size * 8
        assert record.dense_bytes == node.inputs[0].data.size * 4
    assert written.ratio > 8
    # the paper's per-stage table: each stage shrinks every (70% pruned) layer
    stages = written.stages()
    assert sorted(r.name for r in stages) == sorted(n.inputs[0].name[: -len(".indices")]
                                                    for n in _decode_nodes(shared))
    for row in stages:  # (Huffman's code tables can outweigh its gain on a tiny layer)
        assert row.shared_bytes < row.pruned_bytes < row.dense_bytes
        if row.weights >= 10000:
            assert row.huffman_bytes < row.shared_bytes
        assert row.bits in (4, 6) and 1 <= row.gap_bits <= 8
    assert "huffman" in str(written) and "total" in str(written)
    report = inspect_compressed(path)
    assert report.file_bytes == written.file_bytes and report.decode_seconds > 0


def test_compress_shares_a_float_graph_first(cnn_graph, tmp_path):
    info = graphopt.compress(cnn_graph, tmp_path / "m.gcm", bits=3, conv_bits=5)
    loaded = graphopt.load(tmp_path / "m.gcm")
    sizes = sorted(n.inputs[1].data.size for n in _decode_nodes(loaded))
    assert sizes == [8, 8, 32, 32]
    assert info.ratio > 5


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_corrupt_or_truncated_files_raise_typed_errors(shared_cnn, tmp_path):
    _, shared = shared_cnn
    path = tmp_path / "m.gcm"
    graphopt.compress(shared, path)
    good = path.read_bytes()
    size = len(good)
    for offset in (0, 5, 9, 20, size // 2, size - 9):
        path.write_bytes(good)
        _flip(path, offset)
        with pytest.raises(CompressionError) as err:
            graphopt.load(path)
        assert str(path) in str(err.value) or "magic" in str(err.value)
    path.write_bytes(good)
    _flip(path, size // 2)
    with pytest.raises(CompressionError, match="section '.*' fails its checksum"):
        load_compressed(path)
    for cut in (3, 15, 40, size // 3, size - 1):
        path.write_bytes(good[:cut])
        with pytest.raises(GraphoptError):
            graphopt.load(path)
    with pytest.raises(GraphoptError, match="cannot read"):
        graphopt.load(tmp_path / "missing.gcm")
    (tmp_path / "x.bin").write_bytes(b"hello")
    with pytest.raises(GraphoptError, match="not a graphopt file"):
        graphopt.load(tmp_path / "x.bin")


def _rewrite_meta(path, edit):
    """Rewrite the directory's meta with ``edit`` (checksums recomputed: a well-formed file
    carrying a hostile directory)."""
    from graphopt.codec.container import read_container, write_container

    meta, sections = read_container(path)
    edit(meta, sections)
    write_container(path, sections, meta)


@pytest.mark.parametrize("edit, message", [
    (lambda m, s: m.update(format="graphopt-weights"), "not a compressed model"),
    (lambda m, s: m.update(graph="graph g( {"), "does not parse"),
    (lambda m, s: next(iter(m["constants"].values())).update(dtype="f128"), "unknown dtype"),
    (lambda m, s: next(iter(m["constants"].values())).update(shape=[-1, 2]), "negative"),
    (lambda m, s: next(iter(m["constants"].values())).update(encoding="lzma"),
     "unknown encoding"),
    (lambda m, s: s.pop(next(iter(s))), "missing"),
    (lambda m, s: m["constants"].pop(next(iter(m["constants"]))), "no inline data"),
])
def test_hostile_directories_are_refused_with_the_constant_named(shared_cnn, tmp_path, edit,
                                                                  message):
    _, shared = shared_cnn
    path = tmp_path / "m.gcm"
    graphopt.compress(shared, path)
    _rewrite_meta(path, edit)
    with pytest.raises(CompressionError, match=message):
        graphopt.load(path)


def test_a_huge_declared_shape_is_refused_before_allocating(shared_cnn, tmp_path):
    from graphopt.errors import ResourceLimitError

    _, shared = shared_cnn
    path = tmp_path / "m.gcm"
    graphopt.compress(shared, path)
    _rewrite_meta(path, lambda m, s: next(
        e for e in m["constants"].values() if e["encoding"] == "indices").update(
            shape=[1 << 20, 1 << 20]))
    with pytest.raises(ResourceLimitError):
        graphopt.load(path)


# -------------------------------------------------------------------------------------- CLI
def test_cli_compress_and_inspect(tmp_path, capsys):
    from graphopt.cli import main

    out = tmp_path / "mlp.gcm"
    assert main(["compress", "zoo:mlp?width=64&depth=2", "-o", str(out), "--sparsity", "0.8",
                 "--bits", "4", "-q"]) == 0
    graph = graphopt.load(out)
    assert len(_decode_nodes(graph)) == 2
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["file_bytes"] == os.path.getsize(out) and report["ratio"] > 10
    encodings = {c["encoding"] for c in report["constants"]}
    assert "indices" in encodings
    out.write_bytes(out.read_bytes()[:-20])
    assert main(["inspect", str(out)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["compress", "zoo:mlp", "-o", str(tmp_path / "x.onnx")]) == 2
    assert main(["compress", "zoo:mlp", "-o", str(out), "--bits", "13"]) == 2


def test_biases_share_codebooks_only_when_asked(cnn_graph):
    from graphopt.errors import QuantizationError

    plain = graphopt.quantize(cnn_graph, "codebook")
    assert all(n.inputs[0].type.rank >= 2 for n in _decode_nodes(plain))
    with_biases = graphopt.quantize(cnn_graph, "codebook", bias_bits=4)
    biases = [n for n in _decode_nodes(with_biases) if n.inputs[0].type.rank == 1]
    assert len(biases) == 4  # conv (32, 64 channels) and linear (64, 10) biases
    for node in biases:  # a small bias gets a smaller codebook, never one larger than itself
        assert node.inputs[1].data.size * 2 < node.inputs[0].data.size
    with pytest.raises(QuantizationError, match="bias_bits"):
        graphopt.quantize(cnn_graph, "dynamic", bias_bits=4)
