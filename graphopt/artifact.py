"""Versioned model directories: what ``graphopt.save`` writes and ``graphopt.load`` verifies.

A model directory holds an optimized graph in a form anyone can inspect, verify and load
without pickle::

    DIR/
      manifest.json     what the directory is (below); written last
      model.graphopt    the graph: IR text + constants, one safetensors file
                        (graphopt/backends/torch_bundle.py; any safetensors reader sees
                        the weights by IR name)
      model.onnx        optional (onnx=True): the ONNX lowering onnxruntime runs
      model.native      optional (native=True): the native artifact (graphopt/native/artifact.py)

``manifest.json``::

    {"format": "graphopt-model-dir", "version": [1, 0], "graphopt": "0.1.0",
     "created": "2026-12-07T04:30:00Z",
     "inputs":  [{"name": "x", "dtype": "f32", "shape": ["s0", 64]}, ...],   # str: dynamic dim
     "outputs": [...],
     "target": {"backend": "native", "isa": "avx512", "threads": 2} | null,
     "pipeline": "default" | null,
     "figures": {...} | null,       # the user's accuracy / latency figures: JSON numbers, text
     "files": {"model.graphopt": {"sha256": "...", "bytes": 123}, ...},
     "decoder": {...}}              # only in a decoder directory (format 1.1, below)

A *decoder directory* (``graphopt.save(decoder, DIR)``) is a model directory whose graph is a
decoder step graph and whose manifest has the optional ``decoder`` section: what generation
needs besides the graph (cache capacity, cache geometry, vocabulary, stop and pad tokens). This
module stores the section as it is given and checks only that it is an object; its meaning, and
its checks against the graph, belong to graphopt/decoding/directory.py, which is what loads
decoder directories. ``load_model_dir`` refuses a decoder directory (the step graph alone
would silently drop the section); ``graphopt.load`` returns a ``DecoderGraph`` for it.

Loading trusts nothing in the directory: the manifest is size-capped JSON with exactly the
fields above (``figures`` plain JSON of bounded depth); a newer major ``version`` is refused
with the version that wrote it; file names are plain names inside the directory (no path
separators, no ``..``, no symlinks); every listed file's size and sha256 are checked before any
of it is parsed; the graph then loads through the bundle reader (its own checks, no pickle)
and must match the manifest's signature. Any violation raises ``ArtifactError`` naming the
directory and the entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from graphopt.errors import ArtifactError, GraphoptError, UnsafeInputError, entry_point
from graphopt.fileio import atomic_write, safe_output_path
from graphopt.ir.graph import Graph

FORMAT = "graphopt-model-dir"
# (major, minor): a reader refuses a newer major, reads any minor. 1.1 added the optional
# "decoder" section (a 1.0 reader refuses a manifest with it as an unknown field: it does not
# load the step graph without its metadata).
VERSION = (1, 1)
MANIFEST = "manifest.json"
GRAPH_FILE, ONNX_FILE, NATIVE_FILE = "model.graphopt", "model.onnx", "model.native"
MAX_MANIFEST_BYTES = 1 << 20
MAX_FIGURE_DEPTH = 8
FIELDS = {"format", "version", "graphopt", "created", "inputs", "outputs", "target",
          "pipeline", "figures", "files"}
DECODER_SECTION = "decoder"  # optional: the decoder directory's metadata (module doc)
MAX_SECTION_DEPTH = 4
_CHUNK = 1 << 20


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a manifest (what ``graphopt.load`` reads)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))


@entry_point("graphopt.save")
def save_model_dir(model: Any, directory: str | os.PathLike, *, pipeline: str | None = None,
                   target: Any = None, figures: dict | None = None, onnx: bool | None = None,
                   native: bool | None = None, decoder: dict | None = None,
                   int8_weights: str | None = None) -> dict:
    """Write ``model`` (a Graph or a compiled module: native, onnxruntime or torch) to
    ``directory`` (created; an existing one must be empty or a model directory, which is
    replaced file by file, the manifest last). ``onnx`` / ``native``: also store that lowering
    (default: the one ``model`` was compiled for). ``decoder``: the manifest's decoder section,
    as graphopt/decoding/directory.py builds and checks it (None: a plain model directory).
    ``int8_weights``: the ONNX file's int8 weight encoding (graphopt/onnx/int8_weights.py;
    default: the one an onnxruntime module was compiled with, else "s8"). Returns the
    manifest."""
    graph, compiled_for = _graph_and_backend(model)
    if int8_weights is None:
        int8_weights = getattr(model, "int8_weights", "s8") if compiled_for == "onnxruntime" \
            else "s8"
    onnx = compiled_for == "onnxruntime" if onnx is None else bool(onnx)
    native = compiled_for == "native" if native is None else bool(native)
    folder = _output_folder(directory)
    figures = _checked_figures(figures, folder) if figures is not None else None
    from graphopt.backends.torch_bundle import save_bundle

    save_bundle(graph, os.path.join(folder, GRAPH_FILE))
    written = [GRAPH_FILE]
    if onnx:
        from graphopt.onnx.export import to_onnx

        to_onnx(graph, os.path.join(folder, ONNX_FILE), int8_weights=int8_weights)
        written += [n for n in (ONNX_FILE, ONNX_FILE + ".data")
                    if os.path.isfile(os.path.join(folder, n))]
    if native:
        from graphopt.native import artifact

        module = model if compiled_for == "native" else _native_module(graph, target)
        artifact.save(module, os.path.join(folder, NATIVE_FILE))
        written.append(NATIVE_FILE)
    manifest = {"format": FORMAT, "version": list(VERSION), "graphopt": _version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "inputs": signature(graph.inputs), "outputs": signature(graph.outputs),
                "target": _target_dict(target), "pipeline": pipeline, "figures": figures,
                "files": {name: _file_entry(os.path.join(folder, name)) for name in written}}
    if decoder is not None:
        manifest[DECODER_SECTION] = decoder
    with atomic_write(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    for stale in {ONNX_FILE, ONNX_FILE + ".data", NATIVE_FILE} - set(written):
        if os.path.isfile(os.path.join(folder, stale)):  # (from an earlier save here)
            os.remove(os.path.join(folder, stale))
    return manifest


@entry_point("graphopt.load of a model directory")
def load_model_dir(directory: str | os.PathLike) -> Graph:
    """The graph of a model directory, after ``read_manifest`` verified it.

    Raises:
        ArtifactError: the directory is not a valid model directory, or it is a decoder
            directory (its step graph alone would lose the decoder metadata: ``graphopt.load``
            gives the ``DecoderGraph``).
    """
    folder = os.fspath(directory)
    manifest = read_manifest(folder)
    if DECODER_SECTION in manifest:
        raise ArtifactError(
            f"{folder}: a decoder directory (its manifest has a 'decoder' section): load it "
            "with graphopt.load(DIR), which gives the DecoderGraph (its .graph is the step "
            "graph), or run it with `graphopt generate DIR`")
    return load_listed_graph(folder, manifest)


def load_listed_graph(directory: str | os.PathLike, manifest: dict) -> Graph:
    """The graph file of ``directory``, whose ``manifest`` ``read_manifest`` returned (and so
    verified), checked against the manifest's signature."""
    from graphopt.backends.torch_bundle import load_graph

    folder = os.fspath(directory)
    graph = load_graph(os.path.join(folder, GRAPH_FILE))
    for kind, values in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        if signature(values) != manifest[kind]:
            raise ArtifactError(f"{folder}: {GRAPH_FILE}'s {kind} {signature(values)} differ "
                                f"from the manifest's {manifest[kind]}")
    return graph


@entry_point("reading a model directory's manifest")
def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of ``directory``, checked, with every listed file's size and sha256
    verified. Raises ``ArtifactError`` naming the directory and the entry."""
    folder = os.fspath(directory)
    manifest = _parse_manifest(folder)
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ArtifactError(f"{folder}: manifest 'files' must be an object")
    for name, entry in files.items():
        _verify_file(folder, name, entry)
    if GRAPH_FILE not in files:
        raise ArtifactError(f"{folder}: manifest 'files' must list {GRAPH_FILE}")
    for kind in ("inputs", "outputs"):
        _check_signature(folder, kind, manifest[kind])
    for key in ("pipeline", "graphopt", "created"):
        if manifest[key] is not None and not isinstance(manifest[key], str):
            raise ArtifactError(f"{folder}: manifest '{key}' must be text or null")
    if manifest["target"] is not None and not _plain(manifest["target"], 2):
        raise ArtifactError(f"{folder}: manifest 'target' must be a plain JSON object or null")
    if manifest["figures"] is not None and not _plain(manifest["figures"], MAX_FIGURE_DEPTH):
        raise ArtifactError(f"{folder}: manifest 'figures' must be plain JSON (objects, lists, "
                            f"numbers, text; depth <= {MAX_FIGURE_DEPTH}) or null")
    section = manifest.get(DECODER_SECTION)
    if DECODER_SECTION in manifest and (not isinstance(section, dict)
                                        or not _plain(section, MAX_SECTION_DEPTH)):
        raise ArtifactError(f"{folder}: manifest '{DECODER_SECTION}' must be an object of plain "
                            f"JSON (depth <= {MAX_SECTION_DEPTH}); re-save the decoder")
    return manifest


def signature(values) -> list[dict]:
    """Name, dtype and shape (ints; dynamic dims as their symbol text) of graph values."""
    return [{"name": v.name, "dtype": v.dtype.value,
             "shape": [d if isinstance(d, int) else str(d) for d in v.type.shape]}
            for v in values]


# ---------------------------------------------------------------------------------- reading
def _parse_manifest(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise ArtifactError(f"{folder}: not a directory (a model directory holds {MANIFEST})")
    path = os.path.join(folder, MANIFEST)
    if os.path.islink(path) or not os.path.isfile(path):
        raise ArtifactError(f"{folder}: no {MANIFEST} (a regular file) in it: not a model "
                            "directory graphopt.save wrote")
    if os.path.getsize(path) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: {os.path.getsize(path)} bytes, over the "
                            f"{MAX_MANIFEST_BYTES}-byte limit of a manifest")
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a graphopt model manifest (format must be '{FORMAT}')")
    _check_version(path, manifest.get("version"), manifest.get("graphopt"))
    if set(manifest) - {DECODER_SECTION} != FIELDS:
        missing = sorted(FIELDS - set(manifest))
        extra = sorted(set(manifest) - FIELDS - {DECODER_SECTION})
        raise ArtifactError(f"{path}: fields missing {missing}, unknown {extra}")
    return manifest


def _check_version(path: str, version: Any, writer: Any) -> None:
    if (not isinstance(version, list) or len(version) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in version)):
        raise ArtifactError(f"{path}: 'version' must be [major, minor], got {version!r}")
    if version[0] > VERSION[0]:
        by = f" by graphopt {writer}" if isinstance(writer, str) else ""
        raise ArtifactError(
            f"{path}: format version {version[0]}.{version[1]} (written{by}) is newer than "
            f"this graphopt reads ({VERSION[0]}.x): upgrade graphopt to load it")


def _verify_file(folder: str, name: Any, entry: Any) -> None:
    if (not isinstance(name, str) or not name or name in (".", "..", MANIFEST)
            or "/" in name or "\\" in name or "\0" in name):
        raise ArtifactError(f"{folder}: manifest lists {name!r}: file names must be plain "
                            "names inside the directory")
    if (not isinstance(entry, dict) or set(entry) != {"sha256", "bytes"}
            or not isinstance(entry["sha256"], str) or len(entry["sha256"]) != 64
            or not isinstance(entry["bytes"], int) or isinstance(entry["bytes"], bool)):
        raise ArtifactError(f"{folder}: manifest entry for {name} must be "
                            "{'sha256': 64 hex digits, 'bytes': int}")
    path = os.path.join(folder, name)
    if os.path.islink(path) or not os.path.isfile(path):
        raise ArtifactError(f"{path}: listed in the manifest but missing (or not a regular "
                            "file)")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise ArtifactError(f"{path}: {size} bytes, the manifest says {entry['bytes']}: the "
                            "file was changed or truncated after it was saved")
    if _sha256(path) != entry["sha256"].lower():
        raise ArtifactError(f"{path}: sha256 does not match the manifest: the file was changed "
                            "after it was saved (tampered or corrupted); re-save the model")


def _check_signature(folder: str, kind: str, entries: Any) -> None:
    ok = isinstance(entries, list) and all(
        isinstance(e, dict) and set(e) == {"name", "dtype", "shape"}
        and isinstance(e["name"], str) and isinstance(e["dtype"], str)
        and isinstance(e["shape"], list)
        and all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool))
                for d in e["shape"])
        for e in entries)
    if not ok:
        raise ArtifactError(f"{folder}: manifest '{kind}' must be a list of "
                            "{'name', 'dtype', 'shape': [int or symbol]}")


def _plain(value: Any, depth: int) -> bool:
    """JSON objects / lists / numbers / text / booleans / null, at most ``depth`` deep."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if depth <= 0:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth - 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth - 1) for k, v in value.items())
    return False


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- writing
def _graph_and_backend(model: Any) -> tuple[Graph, str | None]:
    if isinstance(model, Graph):
        return model, None
    from graphopt.backends.onnxruntime_backend import OnnxRuntimeModule
    from graphopt.native.module import NativeModule

    if isinstance(model, NativeModule):
        return model.graph, "native"
    if isinstance(model, OnnxRuntimeModule):
        return model.graph, "onnxruntime"
    from graphopt.backends.torch_bundle import graph_of_module

    try:
        return graph_of_module(model), "torch"
    except GraphoptError:
        raise GraphoptError(
            f"graphopt.save takes a Graph or a module graphopt.compile made (native, "
            f"onnxruntime or torch), got {type(model).__name__}") from None


def _output_folder(directory: str | os.PathLike) -> str:
    folder = os.path.abspath(os.fspath(directory))
    if os.path.islink(folder):
        raise UnsafeInputError(f"refusing to write {folder}: it is a symlink; graphopt does not "
                               "write through links")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise GraphoptError(f"{folder} exists and is not a directory: a model is saved as a "
                            "directory (choose a new name)")
    if os.path.isdir(folder) and os.listdir(folder) and not is_model_dir(folder):
        raise GraphoptError(f"{folder} is a non-empty directory without {MANIFEST}: graphopt "
                            "does not write a model into other files (choose a new or empty "
                            "directory)")
    os.makedirs(folder, exist_ok=True)
    safe_output_path(os.path.join(folder, MANIFEST), folder)
    return folder


def _checked_figures(figures: Any, folder: str) -> dict:
    if not isinstance(figures, dict) or not _plain(figures, MAX_FIGURE_DEPTH):
        raise GraphoptError(f"graphopt.save({folder}): figures must be a dict of plain JSON "
                            f"(numbers, text, lists, dicts; depth <= {MAX_FIGURE_DEPTH})")
    json.dumps(figures, allow_nan=False)  # (NaN is not JSON: ValueError names it)
    return figures


def _target_dict(target: Any) -> dict | None:
    if target is None:
        return None
    from graphopt.compile import Target, host_isa

    if not isinstance(target, Target):
        raise GraphoptError(f"graphopt.save: target must be a graphopt.Target or None, got "
                            f"{type(target).__name__}")
    isa = host_isa() if target.isa == "auto" else target.isa
    return {"backend": target.backend, "isa": isa, "threads": target.threads}


def _native_module(graph: Graph, target: Any):
    from graphopt.compile import compile as compile_graph

    threads = getattr(target, "threads", None)
    return compile_graph(graph, backend="native", threads=threads)


def _file_entry(path: str) -> dict:
    return {"sha256": _sha256(path), "bytes": os.path.getsize(path)}


def _version() -> str:
    from graphopt.version import __version__

    return __version__
