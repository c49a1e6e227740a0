"""Saved models load lazily: native artifacts and ``.graphopt`` bundles loaded from a path are
copy-on-write memory maps of the file (``graphopt.filemap``), not copies. Checked here: every
array is aligned in the files graphopt writes, loaded constants are views of the file, outputs
are exact, writes to a loaded module never reach the file, and files that cannot be mapped
(file objects, misaligned tensors, artifacts written by ``np.savez``) are read as before."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch

import graphopt
from graphopt.backends.torch_bundle import load_graph, load_module, save_module
from graphopt.backends.torch_module import to_torch
from graphopt.filemap import is_file_mapped
from graphopt.native import load
from graphopt.stagereport import status_mib


class Block(torch.nn.Module):
    """Linear + layer norm + GPT-2-style ``addmm`` by an [in, out] weight (after optimize a
    transposed, Fortran-ordered view), large enough that no constant is printed inline."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(64, 96)
        self.norm = torch.nn.LayerNorm(96)
        self.w_in_out = torch.nn.Parameter(torch.randn(96, 48) * 0.1)
        self.b = torch.nn.Parameter(torch.randn(48))

    def forward(self, x):
        return torch.addmm(self.b, self.norm(self.fc(x)), self.w_in_out)


@pytest.fixture(scope="module")
def block():
    model, x = Block().eval(), torch.randn(4, 64)
    graph = graphopt.optimize(graphopt.trace(model, (x,)))
    with torch.no_grad():
        expected = model(x).numpy()
    return graph, x, expected


def _mapped(graph) -> dict[str, bool]:
    return {name: is_file_mapped(v.data) for name, v in graph.constants.items()
            if v.data.size > 16}  # (tiny constants are inline in the IR text)


def _data_offsets(path) -> dict[str, int]:
    """File offset of every member's array data (after its local and .npy headers)."""
    raw = path.read_bytes()
    offsets = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name_length, extra_length = struct.unpack(
                "<HH", raw[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_length + extra_length
            with archive.open(info) as member:
                np.lib.format.read_magic(member)
                np.lib.format.read_array_header_1_0(member)
                offsets[info.filename] = start + member.tell()
    return offsets


def test_native_artifact_arrays_are_aligned_and_numpy_reads_them(block, tmp_path):
    graph, _, _ = block
    path = tmp_path / "m.npz"
    graphopt.compile(graph, backend="native", threads=1).save(path)
    offsets = _data_offsets(path)
    assert len(offsets) == len(graph.constants) + 2
    assert all(offset % 64 == 0 for offset in offsets.values()), offsets
    with np.load(path, allow_pickle=False) as npz:  # still a plain .npz to other readers
        for name, value in graph.constants.items():
            np.testing.assert_array_equal(npz[f"const/{name}"], value.data)


def test_native_artifact_loads_as_a_map_of_the_file(block, tmp_path):
    graph, x, expected = block
    path = tmp_path / "m.npz"
    graphopt.compile(graph, backend="native", threads=1).save(path)
    loaded = load(path)
    mapped = _mapped(loaded.graph)
    assert mapped and all(mapped.values()), mapped
    transposed = [v for v in loaded.graph.constants.values()
                  if v.data.ndim == 2 and v.data.flags.f_contiguous and not v.data.flags.c_contiguous]
    assert transposed, "the addmm weight should stay a transposed (Fortran-ordered) view"
    np.testing.assert_allclose(np.asarray(loaded(x.numpy())), expected, rtol=1e-5, atol=1e-5)
    from_bytes = load(io.BytesIO(path.read_bytes()))
    assert not any(_mapped(from_bytes.graph).values())
    np.testing.assert_array_equal(np.asarray(from_bytes(x.numpy())), np.asarray(loaded(x.numpy())))


def test_artifacts_written_by_np_savez_still_load(block, tmp_path):
    """Artifacts from before aligned saving (np.savez layout) load the same; whatever members
    happen to be misaligned are read instead of mapped."""
    graph, x, expected = block
    path = tmp_path / "m.npz"
    graphopt.compile(graph, backend="native", threads=1).save(path)
    with np.load(path, allow_pickle=False) as npz:
        members = {key: npz[key] for key in npz.files}
    old = tmp_path / "old.npz"
    np.savez(old, **members)
    loaded = load(old)
    np.testing.assert_allclose(np.asarray(loaded(x.numpy())), expected, rtol=1e-5, atol=1e-5)


def test_bundle_loads_as_a_map_and_the_file_never_changes(block, tmp_path):
    graph, x, expected = block
    path = tmp_path / "m.graphopt"
    save_module(graph, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_graph(path)
    mapped = _mapped(loaded)
    assert mapped and all(mapped.values()), mapped
    module = to_torch(loaded, share_mapped_weights=True)
    weights = {p.data_ptr() for p in module.parameters()}
    assert any(v.data.ctypes.data in weights for v in loaded.constants.values()), \
        "the module should use the mapped pages, not copies"
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), expected, rtol=1e-5, atol=1e-5)
        for p in module.parameters():
            p.add_(1.0)  # copy-on-write: this process only
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with torch.no_grad():
        again = load_module(path)(x).numpy()
    np.testing.assert_allclose(again, expected, rtol=1e-5, atol=1e-5)


def test_plain_to_torch_still_copies_mapped_weights(block, tmp_path):
    graph, _, _ = block
    path = tmp_path / "m.graphopt"
    save_module(graph, path)
    loaded = load_graph(path)
    module = to_torch(loaded)
    before = {n: v.data.copy() for n, v in loaded.constants.items()}
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(0.0)
    for name, value in loaded.constants.items():
        np.testing.assert_array_equal(value.data, before[name])


def test_misaligned_bundle_from_another_writer_is_read(block, tmp_path):
    """A safetensors file whose header length is not a multiple of 8 puts float tensors at odd
    offsets: they cannot be mapped as arrays, so they are read, with the same values."""
    graph, x, expected = block
    path = tmp_path / "m.graphopt"
    save_module(graph, path)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    blob = json.dumps(header, separators=(",", ":")).encode() + b" "
    blob += b" " * ((-len(blob) % 8) + 1)  # data starts at an odd offset
    odd = tmp_path / "odd.graphopt"
    odd.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length:])
    loaded = load_graph(odd)
    assert not any(_mapped(loaded).values())
    with torch.no_grad():
        np.testing.assert_allclose(to_torch(loaded)(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_loading_a_large_bundle_reads_nothing_up_front(tmp_path):
    """64 MiB of weights: loading the graph maps them, so the process's anonymous memory does
    not grow by the weights' size (it would by 64 MiB for a copy)."""
    if not status_mib("RssAnon"):
        pytest.skip("anonymous vs file-backed memory is read from /proc/self/status, which "
                    "only Linux provides")
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048, bias=False) for _ in range(4)])
    graph = graphopt.trace(model.eval(), (torch.randn(1, 2048),))
    path = tmp_path / "big.graphopt"
    save_module(graph, path)
    del graph, model
    before = status_mib("RssAnon")
    loaded = load_graph(path)
    grown = (status_mib("RssAnon") - before) * 2**20
    assert all(_mapped(loaded).values())
    assert grown < 16 * 2**20, f"anonymous memory grew by {grown / 2**20:.1f} MiB"


def test_onnx_external_data_maps_when_aligned_and_reads_otherwise(tmp_path):
    """from_onnx maps external initializers at 8-byte aligned offsets (as to_onnx writes them)
    and reads the others (another writer's packed file), with the same values."""
    from onnx import TensorProto, helper

    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    for offset, expect_mapped in ((0, True), (3, False)):
        (tmp_path / "w.bin").write_bytes(b"\0" * offset + weight.tobytes())
        init = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[64, 64])
        init.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", str(offset)),
                           ("length", str(weight.nbytes))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])], [init])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        path = tmp_path / f"m{offset}.onnx"
        path.write_bytes(model.SerializeToString())
        imported = graphopt.from_onnx(path)
        (const,) = imported.constants.values()
        np.testing.assert_array_equal(const.data, weight)
        assert is_file_mapped(const.data) is expect_mapped
