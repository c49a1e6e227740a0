"""Loading never runs code from a file; outputs are pickle-free, atomic and symlink-safe.

* ``.pt2``: ``torch.export.load`` unpickles, so graphopt refuses a .pt2 unless trusted; a
  crafted archive's payload (it creates a marker file) must not run.
* ``.graphopt`` torch bundles (IR text + safetensors): round trip equals eager; every
  corruption is an ``ArtifactError`` naming the file and the entry; a header declaring more
  than the memory budget is a ``ResourceLimitError`` before anything is read.
* ``graphopt.fileio``: no partial file on error, no write through a symlink, ONNX external data
  confined to the model's folder.
* The CLI turns each crafted input into one line on stderr and exit status 2.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import sys
import zipfile

import numpy as np
import onnx
import pytest
import torch

import graphopt
from graphopt import zoo
from graphopt.backends.torch_module import load_module, save_module, to_torch
from graphopt.cli import main
from graphopt.errors import ArtifactError, GraphoptError, ResourceLimitError, UnsafeInputError
from graphopt.fileio import atomic_output_path, atomic_write, safe_output_path
from graphopt.limits import memory_budget_scope
from graphopt.model_loader import ModelSpecError, PickleLoadWarning, load_model

SMALL_MLP = {"width": 16, "depth": 2}


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("graphopt: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------- .pt2
class _OpenMarker:
    """Unpickles to ``open(marker, "w")``: creating the file proves the pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted_pt2(tmp_path) -> tuple[str, str]:
    """A real torch.export archive whose example inputs are a code-running pickle.

    torch.export.load reads them with torch.load(weights_only=True), and on failure falls back
    to weights_only=False (torch/_export/serde/serialize.py, deserialize_torch_artifact).
    """
    real = tmp_path / "real.pt2"
    model = torch.nn.Linear(4, 2).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 4),)), str(real))
    marker = str(tmp_path / "PWNED")
    payload = io.BytesIO()
    torch.save(_OpenMarker(marker), payload)
    crafted = tmp_path / "crafted.pt2"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(crafted, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("sample_inputs/model.pt"):
                data = payload.getvalue()
            out.writestr(info, data)
    return str(crafted), marker


def test_crafted_pt2_is_refused_and_runs_nothing(crafted_pt2, capsys):
    path, marker = crafted_pt2
    with pytest.raises(UnsafeInputError, match="trust") as info:
        load_model(path)
    assert path in str(info.value) and "--trust-pt2" in str(info.value)
    code, err = run_cli(capsys, "show", path)
    assert_one_line(code, err, "refusing to load", path)
    assert not os.path.exists(marker)


def test_crafted_pt2_runs_its_payload_only_when_trusted(crafted_pt2):
    """The refusal above is not vacuous: with trust, torch.export.load executes the payload."""
    path, marker = crafted_pt2
    with pytest.warns(PickleLoadWarning), pytest.raises(ModelSpecError, match=path):
        load_model(path, trust_pickle=True)
    assert os.path.exists(marker)


def test_pt2_that_is_not_a_zip(tmp_path, capsys):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"\x80\x04not a zip at all")
    with pytest.raises(ModelSpecError, match="not a zip"):
        load_model(str(path), trust_pickle=True)
    code, err = run_cli(capsys, "show", str(path))
    assert_one_line(code, err, "junk.pt2", "not a zip")


# ------------------------------------------------------------------------------ bundles
@pytest.mark.parametrize("name", ["mlp", "convzoo"])
def test_bundle_round_trip_matches_eager(name, tmp_path):
    model, args = zoo.get(name)
    graph = graphopt.trace(model, args)
    module = to_torch(graph)
    path = tmp_path / f"{name}.graphopt"
    save_module(module, path)
    save_module(graph, tmp_path / "from_graph.graphopt")  # a graph saves the same way
    loaded, again = load_module(path), load_module(tmp_path / "from_graph.graphopt")
    with torch.no_grad():
        expected = model(*args)
        torch.testing.assert_close(loaded(*args), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(again(*args), expected, rtol=1e-4, atol=1e-5)
    assert loaded.code == module.code
    from_bytes = load_module(io.BytesIO(path.read_bytes()))  # a file object works too
    with torch.no_grad():
        torch.testing.assert_close(from_bytes(*args), expected, rtol=1e-4, atol=1e-5)
    # A standard safetensors file: any reader sees the constants as a state dict.
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        assert f.metadata()["format"] == "graphopt-torch/1"
        assert set(f.keys()) == set(graph.constants)
        for key in f.keys():
            np.testing.assert_array_equal(f.get_tensor(key), graph.constants[key].data)


def test_bundle_keeps_trained_weights_and_checks_dtypes(tmp_path):
    model, args = zoo.get("mlp", **SMALL_MLP)
    module = to_torch(graphopt.trace(model, args))
    with torch.no_grad():
        next(module.parameters()).mul_(3.0)  # "fine-tuned" after to_torch
    save_module(module, tmp_path / "tuned.graphopt")
    with torch.no_grad():
        torch.testing.assert_close(load_module(tmp_path / "tuned.graphopt")(*args),
                                   module(*args))
    with pytest.raises(GraphoptError, match="no longer match"):
        save_module(module.half(), tmp_path / "half.graphopt")
    with pytest.raises(GraphoptError, match="to_torch"):
        save_module(model, tmp_path / "eager.graphopt")


@pytest.fixture
def bundle(tmp_path) -> str:
    model, args = zoo.get("mlp", **SMALL_MLP)
    path = tmp_path / "small.graphopt"
    save_module(graphopt.trace(model, args), path)
    return str(path)


def rewrite(path: str, edit) -> None:
    """Apply ``edit(header, data) -> data`` to a bundle's JSON header and data bytes."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    data = edit(header, data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def _first_tensor(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][0])


def _set(key: str, field: str, value):
    def edit(header, data):
        target = _first_tensor(header) if key == "<tensor>" else key
        header[target][field] = value
        return data
    return edit


CORRUPTIONS = {
    "unknown dtype": (_set("<tensor>", "dtype", "F8_E4M3"), "dtype 'F8_E4M3'"),
    "negative dim": (_set("<tensor>", "shape", [-1, 16]), "shape [-1, 16]"),
    "float dim": (_set("<tensor>", "shape", [1.5]), "shape [1.5]"),
    "size mismatch": (_set("<tensor>", "shape", [3]), "data_offsets span"),
    "bad offsets": (_set("<tensor>", "data_offsets", [8, 4]), "data_offsets [8, 4]"),
    "wrong format": (_set("__metadata__", "format", "graphopt-native/1"), "graphopt-native/1"),
    "IR not text": (_set("__metadata__", "graph", 42), "__metadata__.graph"),
    "IR garbage": (_set("__metadata__", "graph", "graph g( {"), "__metadata__.graph"),
    "IR with Python": (_set("__metadata__", "graph", "graph g(%x: f32[__import__('os')"
                            ".system('touch PWNED')]) {\n  return %x\n}"), "__metadata__.graph"),
    "spec not JSON": (_set("__metadata__", "input_spec", "[1, {"), "input_spec"),
    "spec leaf count": (_set("__metadata__", "output_spec", json.dumps([1, {
        "type": "builtins.tuple", "context": "null", "children_spec": [
            {"type": None, "context": None, "children_spec": []}] * 2}])), "2 leaves"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_bundle_is_an_artifact_error(bundle, case, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    edit, fragment = CORRUPTIONS[case]
    rewrite(bundle, edit)
    with pytest.raises(ArtifactError) as info:
        load_module(bundle)
    assert bundle in str(info.value) and fragment in str(info.value), str(info.value)
    assert not os.path.exists(tmp_path / "PWNED")


def test_extra_missing_and_overlapping_entries(bundle):
    def extra(header, data):
        header["intruder"] = {"dtype": "U8", "shape": [2], "data_offsets": [len(data),
                                                                           len(data) + 2]}
        return data + b"\0\0"

    def drop(name):
        def edit(header, data):
            begin, end = header.pop(name)["data_offsets"]
            for entry in (v for k, v in header.items() if k != "__metadata__"):
                entry["data_offsets"] = [o - (end - begin) if o >= end else o
                                         for o in entry["data_offsets"]]
            return data[:begin] + data[end:]
        return edit

    def overlap(header, data):
        name = _first_tensor(header)
        other = next(k for k in header if k not in ("__metadata__", name))
        header[other]["data_offsets"] = list(header[name]["data_offsets"])
        header[other]["shape"] = header[name]["shape"]
        return data

    for edit, fragment in ((extra, "entry 'intruder' is not a constant"),
                           (drop("layers.0.weight"), "%layers.0.weight has no inline data"),
                           (drop("layers.0.bias"), "%layers.0.bias of the graph has no tensor"),
                           (overlap, "overlap or leave a gap")):
        saved = open(bundle, "rb").read()
        rewrite(bundle, edit)
        with pytest.raises(ArtifactError, match=fragment):
            load_module(bundle)
        open(bundle, "wb").write(saved)


def test_truncated_and_foreign_files(bundle, tmp_path):
    raw = open(bundle, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    for cut in (0, 5, 8 + n // 2, 8 + n + 10, len(raw) - 1):
        path = tmp_path / f"cut{cut}.graphopt"
        path.write_bytes(raw[:cut])
        with pytest.raises(ArtifactError, match=f"cut{cut}.graphopt"):
            load_module(path)
    from safetensors.numpy import save_file

    plain = tmp_path / "state_dict.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(plain))
    with pytest.raises(ArtifactError, match="not a graphopt-torch/1 bundle"):
        load_module(plain)
    not_json = tmp_path / "not_json.graphopt"
    not_json.write_bytes(struct.pack("<Q", 8) + b"\xff\xfe{{{{{{" + b"")
    with pytest.raises(ArtifactError, match="not JSON"):
        load_module(not_json)
    with pytest.raises(ArtifactError, match="cannot read"):
        load_module(tmp_path / "missing.graphopt")


def test_spec_never_imports_what_it_names(bundle, tmp_path, monkeypatch):
    """torch's treespec_loads would import the module an enum context names; ours does not."""
    (tmp_path / "graphopt_spec_payload.py").write_text(
        "open(__file__ + '.imported', 'w').close()\nimport enum\nclass E(enum.Enum):\n  A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    enum_context = json.dumps([{"__enum__": True, "fqn": "graphopt_spec_payload:E",
                                "name": "A"}])
    leaf = {"type": None, "context": None, "children_spec": []}
    spec = json.dumps([1, {"type": "builtins.dict", "context": enum_context,
                           "children_spec": [leaf]}])
    rewrite(bundle, _set("__metadata__", "output_spec", spec))
    with pytest.raises(ArtifactError, match="output_spec"):
        load_module(bundle)
    unknown = json.dumps([1, {"type": "graphopt_spec_payload.Thing", "context": "null",
                              "children_spec": [leaf]}])
    rewrite(bundle, _set("__metadata__", "output_spec", unknown))
    with pytest.warns(UserWarning, match="not registered"):
        module = load_module(bundle)  # flat outputs, nothing imported
    assert module.output_spec is None
    assert "graphopt_spec_payload" not in sys.modules
    assert not os.path.exists(tmp_path / "graphopt_spec_payload.py.imported")


def test_over_budget_header_is_a_resource_limit(bundle):
    rewrite(bundle, _set("<tensor>", "shape", [1 << 20, 1 << 20]))  # declares 4 TiB
    with pytest.raises(ResourceLimitError, match="small.graphopt") as info:
        load_module(bundle)
    assert info.value.requested >= 4 << 40


def test_budget_is_checked_before_reading(tmp_path):
    model, args = zoo.get("mlp", **SMALL_MLP)
    path = tmp_path / "m.graphopt"
    save_module(graphopt.trace(model, args), path)
    with memory_budget_scope(512), pytest.raises(ResourceLimitError, match="m.graphopt"):
        load_module(path)


# ------------------------------------------------------------------------------- fileio
def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"new, half written")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]  # the temporary file is gone
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    with atomic_write(tmp_path / "text.txt", "w") as f:
        f.write("héllo")
    assert (tmp_path / "text.txt").read_text(encoding="utf-8") == "héllo"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "text.txt").st_mode) == 0o666 & ~umask
    with pytest.raises(ValueError):
        with atomic_output_path(tmp_path / "x.npz") as temp:
            np.savez(temp, a=np.zeros(2))
            raise ValueError("writer failed")
    assert sorted(os.listdir(tmp_path)) == ["out.bin", "text.txt"]


def test_writing_through_a_symlink_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    link = out / "model.onnx"
    link.symlink_to(secret)
    dangling = out / "dangling.bin"
    dangling.symlink_to(outside / "does-not-exist")
    for path in (link, dangling):
        with pytest.raises(UnsafeInputError, match="symlink") as info:
            with atomic_write(path) as f:
                f.write(b"overwritten")
        assert str(path) in str(info.value)
    assert secret.read_text() == "keep me" and not (outside / "does-not-exist").exists()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    for escaping in (out / "sub" / "x.data", out / ".." / "outside" / "x.data"):
        with pytest.raises(UnsafeInputError, match="outside the output folder"):
            safe_output_path(escaping, root=out)
    assert safe_output_path(out / "fine.data", root=out) == str(out / "fine.data")


def _graph_with_big_weight():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval()
    x = torch.randn(1, 64)
    return graphopt.trace(model, (x,)), model, x


def test_onnx_external_data_is_confined_and_atomic(tmp_path, monkeypatch):
    graph, model, x = _graph_with_big_weight()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep me")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "m.onnx.data").symlink_to(outside)
    with pytest.raises(UnsafeInputError, match="m.onnx.data"):
        graphopt.to_onnx(graph, folder / "m.onnx", external_data=True)
    assert outside.read_bytes() == b"keep me" and not (folder / "m.onnx").exists()
    (folder / "m.onnx.data").unlink()

    model_proto = graphopt.to_onnx(graph, folder / "m.onnx", external_data=True)
    locations = {e.value for t in model_proto.graph.initializer for e in t.external_data
                 if e.key == "location"}
    assert locations == {"m.onnx.data"}  # a bare name: the model's own folder
    assert sorted(os.listdir(folder)) == ["m.onnx", "m.onnx.data"]
    before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}

    import graphopt.onnx.export as export

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_external_data", failing)
    with pytest.raises(OSError):
        graphopt.to_onnx(graph, folder / "m.onnx", external_data=True)
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == before
    monkeypatch.undo()
    session_out = graphopt.run(graphopt.from_onnx(folder / "m.onnx"), x)
    with torch.no_grad():
        torch.testing.assert_close(session_out, model(x), rtol=1e-4, atol=1e-5)
    (tmp_path / "link.onnx").symlink_to(outside)
    with pytest.raises(UnsafeInputError, match="link.onnx"):
        graphopt.to_onnx(graph, tmp_path / "link.onnx")
    assert outside.read_bytes() == b"keep me"


# ---------------------------------------------------------------------------------- CLI
def test_cli_crafted_inputs_are_one_line_exit_2(capsys, tmp_path, bundle):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07\x12\x04junk\xff\xff\xff")
    model, args = zoo.get("mlp", **SMALL_MLP)
    good = tmp_path / "good.onnx"
    graphopt.to_onnx(graphopt.trace(model, args), good)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_zip = tmp_path / "notzip.pt2"
    not_zip.write_bytes(b"PK\x03\x04 truncated zip")
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me")
    link = tmp_path / "link.onnx"
    link.symlink_to(secret)
    mlp = "zoo:mlp?width=16&depth=2"
    cases = [
        (["show", str(corrupt)], "corrupt.onnx"),
        (["show", str(truncated)], "truncated.onnx"),
        (["show", str(not_zip)], "notzip.pt2"),
        (["bench", mlp, "--threads", str(10**9), "--backends", "eager"], "--threads"),
        (["optimize", mlp, "-o", str(link)], "symlink"),
        (["optimize", mlp, "-o", str(tmp_path / "m.pth")], ".graphopt"),
    ]
    for argv, fragment in cases:
        code, err = run_cli(capsys, *argv)
        assert_one_line(code, err, fragment)
    assert secret.read_text() == "keep me"


def test_cli_torch_output_is_a_bundle(capsys, tmp_path):
    out = tmp_path / "m.graphopt"
    code, err = run_cli(capsys, "optimize", "zoo:mlp?width=16&depth=2", "-o", str(out), "-q")
    assert code == 0 and "load_module" in err and "weights_only" not in err
    model, args = zoo.get("mlp", **SMALL_MLP)
    with torch.no_grad():
        torch.testing.assert_close(load_module(out)(*args), model(*args), rtol=1e-4, atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["m.graphopt"]
    # onnx output written atomically too: nothing but the model in the folder
    code, _ = run_cli(capsys, "optimize", "zoo:mlp?width=16&depth=2", "-o",
                      str(tmp_path / "m.onnx"), "-q")
    assert code == 0 and sorted(os.listdir(tmp_path)) == ["m.graphopt", "m.onnx"]
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
