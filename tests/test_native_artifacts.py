"""Saved native artifacts are validated on load and written atomically: corrupt, oversized or
malicious archives raise ``ArtifactError`` naming the file (nothing is unpickled or executed),
saving refuses symbolic links, and a bounded run of the artifact fuzz harness finds nothing.
Split from tests/test_native_safety.py; ``make asan`` / ``make tsan`` run this file against
sanitizer builds of graphopt._C."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest
import torch
from test_native_safety import _mlp

import graphopt
from graphopt.errors import ArtifactError, ResourceLimitError, UnsafeInputError
from graphopt.limits import memory_budget_scope
from graphopt.native import load

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, bytes, graph, example args) of a saved two-layer MLP."""
    g, args = _mlp()
    path = tmp_path_factory.mktemp("artifact") / "mlp.npz"
    graphopt.compile(g, backend="native", threads=1).save(path)
    return path, path.read_bytes(), g, args


def _rewrite(data: bytes, edit) -> bytes:
    """The artifact with ``edit(dict of name -> member bytes)`` applied."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    edit(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return out.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def _meta_edit(**changes):
    def edit(members):
        arr = np.load(io.BytesIO(members["__meta__.npy"]))
        meta = json.loads(str(arr))
        for k, v in changes.items():
            if v is _DROP:
                meta.pop(k)
            else:
                meta[k] = v
        members["__meta__.npy"] = _npy(np.array(json.dumps(meta)))
    return edit


_DROP = object()


def test_artifact_round_trip(saved):
    path, _, g, args = saved
    loaded = load(path)
    want = graphopt.compile(g, backend="native")(*args)
    torch.testing.assert_close(loaded(*args), want)
    assert sorted(os.listdir(path.parent)) == ["mlp.npz"]  # no temporary file left behind


@pytest.mark.parametrize("corrupt,match", [
    (lambda d: d[: len(d) // 2], "not a readable"),
    (lambda d: b"", "not a readable"),
    (lambda d: b"\x93NUMPY" + d[6:100], "not a readable|single .npy"),
    (lambda d: _npy(np.zeros(3)), "single .npy array"),
    (lambda d: _rewrite(d, _meta_edit(format="graphopt-native/99")), "format"),
    (lambda d: _rewrite(d, _meta_edit(threads=10**9)), "threads"),
    (lambda d: _rewrite(d, _meta_edit(threads=0)), "threads"),
    (lambda d: _rewrite(d, _meta_edit(threads="2")), "threads"),
    (lambda d: _rewrite(d, _meta_edit(fallback="python")), "fallback"),
    (lambda d: _rewrite(d, _meta_edit(sparse="maybe")), "sparse"),
    (lambda d: _rewrite(d, _meta_edit(bf16="all")), "bf16"),
    (lambda d: _rewrite(d, _meta_edit(bf16=["layers.0.weight"])), "bf16"),
    (lambda d: _rewrite(d, _meta_edit(extra=1)), "unknown"),
    (lambda d: _rewrite(d, _meta_edit(threads=_DROP)), "missing"),
    (lambda d: _rewrite(d, lambda m: m.update({"__meta__.npy": _npy(np.array("{"))})), "JSON"),
    (lambda d: _rewrite(d, lambda m: m.update({"__meta__.npy": _npy(np.array("[1]"))})),
     "JSON object"),
    (lambda d: _rewrite(d, lambda m: m.pop("__graph__.npy")), "__graph__ is missing"),
    (lambda d: _rewrite(d, lambda m: m.update({"evil.npy": _npy(np.zeros(1))})), "evil"),
    (lambda d: _rewrite(d, lambda m: m.update({"const/nope.npy": _npy(np.zeros(1))})),
     "const/nope"),
    (lambda d: _rewrite(d, lambda m: m.update({"__graph__.npy": _npy(np.zeros(2))})),
     "__graph__ must be a 0-d unicode"),
    (lambda d: _rewrite(d, lambda m: m.update(
        {"const/layers.0.weight.npy": _npy(np.zeros((3, 3), F32))})), "layers.0.weight"),
    (lambda d: _rewrite(d, lambda m: m.update(
        {"const/layers.0.weight.npy": _npy(np.zeros((8, 8), np.float64))})), "float64"),
], ids=["truncated", "empty", "npy-magic", "single-npy", "format", "huge-threads",
        "zero-threads", "str-threads", "fallback", "sparse", "bf16-type", "bf16-name",
        "unknown-field", "missing-field", "bad-json", "json-list", "no-graph", "unknown-entry",
        "unused-const", "graph-array", "const-shape", "const-dtype"])
def test_corrupt_artifacts_raise_artifact_error_naming_the_file(saved, tmp_path, corrupt, match):
    path = tmp_path / "bad.npz"
    path.write_bytes(corrupt(saved[1]))
    with pytest.raises(ArtifactError, match=match) as info:
        load(path)
    assert str(path) in str(info.value)


def test_pickled_object_array_is_refused_and_never_unpickled(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = np.empty(1, dtype=object)
    evil[0] = Payload()
    data = _rewrite(saved[1], lambda m: m.update({"const/layers.0.bias.npy": _npy(evil)}))
    path = tmp_path / "evil.npz"
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match="const/layers.0.bias.*object") as info:
        load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_python_payload_in_a_dim_is_not_executed(saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def edit(members):
        text = str(np.load(io.BytesIO(members["__graph__.npy"])))
        members["__graph__.npy"] = _npy(np.array(text.replace("[2, 8]", f"[{payload}, 8]", 1)))

    path = tmp_path / "payload.npz"
    path.write_bytes(_rewrite(saved[1], edit))
    with pytest.raises(ArtifactError, match="__graph__") as info:
        load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_declared_sizes_are_checked_before_reading(saved, tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}
    raw = io.BytesIO()
    np.lib.format.write_array_header_1_0(raw, header)
    lie = raw.getvalue() + b"\x00" * 64
    path = tmp_path / "huge.npz"
    path.write_bytes(_rewrite(saved[1], lambda m: m.update({"const/layers.0.bias.npy": lie})))
    with pytest.raises((ArtifactError, ResourceLimitError), match="const/layers.0.bias"):
        load(path)
    with memory_budget_scope(1 << 50), pytest.raises(ArtifactError, match="stores"):
        load(path)


def test_save_is_atomic_and_refuses_symlinks(saved, tmp_path):
    _, _, g, _ = saved
    module = graphopt.compile(g, backend="native", threads=1)
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    link = tmp_path / "model.npz"
    link.symlink_to(target)
    with pytest.raises(UnsafeInputError, match="symbolic link"):
        module.save(link)
    assert target.read_text() == "keep me"
    out = tmp_path / "model2.npz"
    out.write_bytes(b"old contents")
    module.save(out)
    assert load(out).threads == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "model2.npz",
                                                          "victim.txt"]


# ------------------------------------------------------------------------------------ fuzz
def test_artifact_fuzz_harness_smoke():
    """A bounded run of fuzz/fuzz_artifact.py over mutated seeds (the full runs: make fuzz)."""
    sys.path.insert(0, os.path.join(ROOT, "fuzz"))
    try:
        import fuzz_artifact
        from run import Mutator, seed_inputs
    finally:
        sys.path.pop(0)
    corpus = seed_inputs(fuzz_artifact, "artifact")
    assert corpus, "fuzz/corpus/artifact is empty"
    for data in corpus:  # seeds load and run
        fuzz_artifact.test_one_input(data)
    mutator = Mutator(corpus, seed=1234)
    for _ in range(150):
        fuzz_artifact.test_one_input(mutator.next())
