"""Model directories (issue #19): ``graphopt.save(model, DIR)`` / ``graphopt.load(DIR)``
(graphopt/artifact.py): save -> load -> run bit-identical on every backend, the manifest's
signature / target / pipeline / figures, and every way a directory can be wrong: tampered or
truncated files, newer formats, unlisted or escaping file names, edited manifests."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.export import Dim

import graphopt
from graphopt.artifact import GRAPH_FILE, MANIFEST, NATIVE_FILE, ONNX_FILE, read_manifest
from graphopt.errors import ArtifactError, GraphoptError, UnsafeInputError


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = graphopt.optimize(graphopt.trace(model, (x,), dynamic_shapes=({0: Dim("batch")},)))
    return graph, x


def _manifest(folder):
    with open(os.path.join(folder, MANIFEST)) as f:
        return json.load(f)


def _rewrite_manifest(folder, **changes):
    manifest = _manifest(folder)
    manifest.update(changes)
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f)


@pytest.mark.parametrize("backend", ["interpreter", "torch", "native", "onnxruntime"])
def test_save_load_run_is_bit_identical(cnn, tmp_path, backend):
    graph, x = cnn
    graphopt.save(graph, tmp_path / "m")
    loaded = graphopt.load(tmp_path / "m")
    assert str(loaded) == str(graph)
    def run(g):
        with torch.no_grad():
            if backend == "torch":
                return graphopt.to_torch(g)(x)
            return graphopt.compile(g, backend=backend)(x)

    before, after = run(graph), run(loaded)
    assert torch.equal(torch.as_tensor(before), torch.as_tensor(after))


def test_manifest_records_what_made_the_model(cnn, tmp_path):
    graph, x = cnn
    native = graphopt.compile(graph, backend="native", threads=1)
    figures = {"accuracy": {"top1": 0.976, "worst_class": 0.9}, "latency_ms": {"p50": 0.04}}
    manifest = graphopt.save(native, tmp_path / "m", pipeline="default", figures=figures,
                             onnx=True, target=graphopt.Target("native", threads=1))
    assert manifest == read_manifest(tmp_path / "m")
    assert set(manifest["files"]) == {GRAPH_FILE, ONNX_FILE, NATIVE_FILE}
    assert manifest["inputs"] == [{"name": graph.inputs[0].name, "dtype": "f32",
                                   "shape": [str(graph.inputs[0].type.shape[0]), 3, 8, 8]}]
    assert isinstance(manifest["inputs"][0]["shape"][0], str)  # the dynamic batch dim
    assert manifest["pipeline"] == "default" and manifest["figures"] == figures
    assert manifest["target"]["backend"] == "native" and manifest["target"]["isa"] != "auto"
    assert manifest["version"][0] == 1 and manifest["graphopt"]
    # the stored lowerings are the real thing: onnxruntime and the native runtime run them
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "m" / ONNX_FILE))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.as_tensor(got), graphopt.run(graph, x), rtol=1e-4,
                               atol=1e-5)
    from graphopt.native import load as load_native

    reloaded = load_native(tmp_path / "m" / NATIVE_FILE)
    assert torch.equal(reloaded(x)[0] if isinstance(reloaded(x), (list, tuple))
                       else reloaded(x), native(x))


def test_a_tampered_or_truncated_file_is_rejected(cnn, tmp_path):
    graph, _ = cnn
    graphopt.save(graph, tmp_path / "m")
    path = tmp_path / "m" / GRAPH_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        graphopt.load(tmp_path / "m")
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(ArtifactError, match="changed or truncated"):
        graphopt.load(tmp_path / "m")


def test_a_newer_format_is_refused_and_a_newer_minor_read(cnn, tmp_path):
    graph, _ = cnn
    graphopt.save(graph, tmp_path / "m")
    _rewrite_manifest(tmp_path / "m", version=[1, 7])
    graphopt.load(tmp_path / "m")
    _rewrite_manifest(tmp_path / "m", version=[2, 0], graphopt="9.0.0")
    with pytest.raises(ArtifactError, match=r"format version 2\.0 \(written by graphopt "
                                            r"9\.0\.0\) is newer.*upgrade graphopt"):
        graphopt.load(tmp_path / "m")


@pytest.mark.parametrize("change, message", [
    ({"files": {"../outside": {"sha256": "0" * 64, "bytes": 1}}}, "plain names"),
    ({"files": {GRAPH_FILE: {"sha256": "0" * 64}}}, "must be"),
    ({"files": {}}, f"must list {GRAPH_FILE}"),
    ({"extra": 1}, "unknown"),
    ({"format": "something-else"}, "not a graphopt model manifest"),
    ({"version": "1.0"}, "major, minor"),
    ({"figures": {"a": [[[[[[[[[[1]]]]]]]]]]}}, "plain JSON"),
    ({"inputs": [{"name": "x", "dtype": "f32"}]}, "'inputs' must be"),
    ({"pipeline": 3}, "'pipeline' must be text"),
])
def test_an_edited_manifest_is_rejected(cnn, tmp_path, change, message):
    graph, _ = cnn
    graphopt.save(graph, tmp_path / "m")
    _rewrite_manifest(tmp_path / "m", **change)
    with pytest.raises(ArtifactError, match=message):
        graphopt.load(tmp_path / "m")


def test_a_signature_that_does_not_match_the_graph_is_rejected(cnn, tmp_path):
    graph, _ = cnn
    graphopt.save(graph, tmp_path / "m")
    manifest = _manifest(tmp_path / "m")
    manifest["inputs"][0]["shape"][1] = 4
    _rewrite_manifest(tmp_path / "m", inputs=manifest["inputs"])
    with pytest.raises(ArtifactError, match="differ from the manifest"):
        graphopt.load(tmp_path / "m")


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[]", b"[" * 100000,
                                     b'{"format": "graphopt-model-dir"}'])
def test_a_broken_manifest_is_an_artifact_error(cnn, tmp_path, content):
    graph, _ = cnn
    graphopt.save(graph, tmp_path / "m")
    (tmp_path / "m" / MANIFEST).write_bytes(content)
    with pytest.raises(ArtifactError):
        graphopt.load(tmp_path / "m")


def test_links_and_missing_files(cnn, tmp_path):
    graph, _ = cnn
    graphopt.save(graph, tmp_path / "m")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        graphopt.load(tmp_path)
    moved = tmp_path / "elsewhere"
    os.replace(tmp_path / "m" / GRAPH_FILE, moved)
    with pytest.raises(ArtifactError, match="missing"):
        graphopt.load(tmp_path / "m")
    os.symlink(moved, tmp_path / "m" / GRAPH_FILE)  # same bytes, through a link: refused
    with pytest.raises(ArtifactError, match="missing"):
        graphopt.load(tmp_path / "m")


def test_saving_never_clobbers_other_files(cnn, tmp_path):
    graph, _ = cnn
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(GraphoptError, match="without manifest.json"):
        graphopt.save(graph, tmp_path / "notes")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GraphoptError, match="not a directory"):
        graphopt.save(graph, tmp_path / "file")
    os.symlink(tmp_path / "notes", tmp_path / "link")
    with pytest.raises(UnsafeInputError):
        graphopt.save(graph, tmp_path / "link")
    graphopt.save(graph, tmp_path / "m", onnx=True)
    graphopt.save(graph, tmp_path / "m")  # a model directory is replaced
    assert set(_manifest(tmp_path / "m")["files"]) == {GRAPH_FILE}
    assert not (tmp_path / "m" / ONNX_FILE).exists()  # no stale lowering left beside it
    with pytest.raises(GraphoptError, match="figures"):
        graphopt.save(graph, tmp_path / "m2", figures={"f": object()})


def test_cli_optimize_to_a_model_directory(tmp_path, capsys):
    from graphopt.cli import main

    out = tmp_path / "mlp"
    assert main(["optimize", "zoo:mlp?width=32&depth=2", "-o", str(out), "--backend", "onnx",
                 "-q"]) == 0
    manifest = read_manifest(out)
    assert set(manifest["files"]) == {GRAPH_FILE, ONNX_FILE}
    assert manifest["pipeline"] == "default" and manifest["target"]["backend"] == "onnxruntime"
    assert "model directory" in capsys.readouterr().out
    graph = graphopt.load(out)
    assert graph.inputs and graph.nodes


def test_weights_load_64_byte_aligned_so_torch_sums_in_the_same_order(cnn, tmp_path):
    """torch's GEMM / convolution kernels sum in an order that depends on their operands'
    alignment: a weight mapped at another alignment than the saved one gave outputs 8e-7
    apart. Bundles place every tensor of a size multiple of 64 bytes 64-byte aligned."""
    graph, x = cnn
    graphopt.save(graph, tmp_path / "m")
    loaded = graphopt.load(tmp_path / "m")
    for name, value in loaded.constants.items():
        if value.data.nbytes % 64 == 0:
            assert value.data.ctypes.data % 64 == 0, name
    assert torch.equal(graphopt.run(loaded, x), graphopt.run(graph, x))
