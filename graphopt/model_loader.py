"""Resolve a MODEL spec (what the ``graphopt`` CLI takes) into a model, example inputs and a graph.

Spec syntax::

    zoo:NAME[?key=value&key=value...]     a built-in example (graphopt.zoo), e.g. zoo:mlp,
                                          zoo:bert?layers=2&seq=32, zoo:resnet50?depths=1,1,1,1
    package.module:function[?k=v...]      a Python factory returning (model, example_inputs)
    path/to/file.py:function[?k=v...]     the same, from a file that is not on sys.path
    path/to/model.onnx[?sym=N...]         an ONNX model; ?sym=N sets a symbolic input dim
                                          (dims not given are 1); inputs are random
    path/to/model_dir[?sym=N...]          a model directory (graphopt.save), likewise
    path/to/program.pt2                   a torch.export.save'd ExportedProgram (its stored
                                          example inputs are used); loading one unpickles it,
                                          so only with ``trust_pickle=True`` (CLI --trust-pt2)

Option values are parsed as ``true``/``false``, ints, floats, comma lists (tuples) or else
strings. A factory returns ``(model, args)`` or ``(model, args, kwargs)``; a single tensor for
``args`` is treated as ``(tensor,)``; its options are passed as keyword arguments.

Every malformed spec raises :class:`ModelSpecError` with a one-line message.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph

_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")
SPEC_HELP = ("a .onnx file, a model directory, a torch.export .pt2 file, "
             "package.module:function (returns "
             "(model, example_inputs)) or zoo:NAME[?key=value&...] (built-ins: see "
             "`graphopt.zoo`)")


class ModelSpecError(GraphoptError):
    """A MODEL spec that cannot be resolved: missing file, corrupt model, bad factory path..."""


@dataclass
class LoadedModel:
    """A resolved MODEL spec.

    Attributes:
        spec: the spec as given.
        kind: "zoo", "factory", "onnx", "modeldir" or "pt2".
        name: a short display name (zoo name, function name, file stem).
        module: the PyTorch module, or None for ONNX files (no eager model then).
        args / kwargs: example inputs.
        onnx_path: the ONNX file for kind "onnx".
        options: the ``?key=value`` options of the spec.
        trace_s: seconds spent producing the graph (tracing or importing), once built.
    """

    spec: str
    kind: str
    name: str
    module: torch.nn.Module | None
    args: tuple
    kwargs: dict = field(default_factory=dict)
    onnx_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    trace_s: float | None = None
    _graph: Graph | None = field(default=None, repr=False)

    def graph(self) -> Graph:
        """The model's graphopt IR (traced with torch.export on first use, then cached)."""
        if self._graph is None:
            from graphopt.frontend import trace

            start = time.perf_counter()
            self._graph = trace(self.module, self.args, self.kwargs or None)
            self.trace_s = time.perf_counter() - start
        return self._graph

    @property
    def has_graph(self) -> bool:
        return self._graph is not None


def parse_value(text: str) -> Any:
    """``true`` -> True, ``3`` -> 3, ``0.5`` -> 0.5, ``1,2`` -> (1, 2), anything else: text."""
    text = text.strip()
    if "," in text:
        return tuple(parse_value(part) for part in text.split(",") if part.strip())
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"zoo:bert?layers=2&seq=16"`` -> ``("zoo:bert", {"layers": 2, "seq": 16})``."""
    base, sep, query = spec.partition("?")
    options: dict[str, Any] = {}
    if sep:
        for item in filter(None, query.split("&")):
            key, eq, value = item.partition("=")
            if not eq or not key.strip().isidentifier():
                raise ModelSpecError(f"bad option '{item}' in MODEL '{spec}': expected key=value")
            options[key.strip()] = parse_value(value)
    return base.strip(), options


def load_model(spec: str, *, trust_pickle: bool = False) -> LoadedModel:
    """Resolve ``spec`` (see the module docstring).

    Args:
        spec: the MODEL spec.
        trust_pickle: allow a ``.pt2`` file. ``torch.export.load`` unpickles parts of it,
            which runs any code the file names: pass True only for files you trust.

    Raises:
        ModelSpecError: the spec is malformed, the file is missing or corrupt, the factory
            cannot be imported or returns something else than ``(model, inputs)``.
        UnsafeInputError: a ``.pt2`` file without ``trust_pickle``.
    """
    if not spec or not spec.strip():
        raise ModelSpecError(f"empty MODEL; expected {SPEC_HELP}")
    base, options = split_spec(spec)
    if base.startswith("zoo:"):
        return _load_zoo(spec, base[4:], options)
    lower = base.lower()
    if lower.endswith(".onnx"):
        return _load_onnx(spec, base, options)
    if lower.endswith(".pt2"):
        if options:
            raise ModelSpecError(f"a .pt2 MODEL takes no ?options (got {', '.join(options)})")
        return _load_pt2(spec, base, trust_pickle)
    if _FACTORY.match(base):
        return _load_factory(spec, base, options)
    if os.path.isdir(base):
        return _load_model_dir(spec, base, options)
    if os.path.exists(base):
        raise ModelSpecError(f"cannot tell what kind of model '{base}' is: expected a .onnx or "
                             ".pt2 file")
    raise ModelSpecError(f"cannot interpret MODEL '{spec}': expected {SPEC_HELP}")


# ------------------------------------------------------------------------------------- zoo
def _load_zoo(spec: str, name: str, options: dict[str, Any]) -> LoadedModel:
    from graphopt import zoo

    if name not in zoo.ZOO:
        import difflib

        close = difflib.get_close_matches(name, list(zoo.ZOO), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ModelSpecError(f"unknown zoo model '{name}'{hint}; available: "
                             f"{', '.join(sorted(zoo.ZOO))}")
    try:
        model, args = zoo.get(name, **options)
    except TypeError as exc:
        raise ModelSpecError(f"zoo model '{name}' rejects options {options}: {exc}") from exc
    except ImportError as exc:
        raise ModelSpecError(f"zoo model '{name}' is unavailable: {exc}") from exc
    return LoadedModel(spec, "zoo", name, model, _as_args(args, spec), {}, options=options)


# -------------------------------------------------------------------------------- factory
def is_factory(base: str) -> bool:
    """Whether ``base`` (a spec without its ``?options``) names a factory function."""
    return _FACTORY.match(base) is not None


def call_factory(base: str, options: dict[str, Any]) -> Any:
    """Import ``package.module:function`` or ``file.py:function`` and call it with
    ``options``; returns what it returned (``ModelSpecError`` for any failure)."""
    found = _FACTORY.match(base)
    if found is None:
        raise ModelSpecError(f"'{base}' is not package.module:function or file.py:function")
    module_name, attr = found.group("module"), found.group("attr")
    fn: Any = _import_factory_module(module_name)
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ModelSpecError(f"module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise ModelSpecError(f"'{module_name}:{attr}' is not callable")
    try:
        return fn(**options)
    except Exception as exc:
        raise ModelSpecError(f"factory {module_name}:{attr} raised {type(exc).__name__}: "
                             f"{_first_line(exc)}") from exc


def _import_factory_module(module_name: str):
    if module_name.endswith(".py"):
        if not os.path.isfile(module_name):
            raise ModelSpecError(f"no such file: {module_name}")
        mod_spec = importlib.util.spec_from_file_location(
            "_graphopt_factory_" + re.sub(r"\W", "_", os.path.basename(module_name)[:-3]),
            module_name)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelSpecError(f"cannot load {module_name}: {type(exc).__name__}: "
                                 f"{_first_line(exc)}") from exc
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"cannot import module '{module_name}': {exc}") from exc
    except Exception as exc:
        raise ModelSpecError(f"importing '{module_name}' failed: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from exc


def _load_factory(spec: str, base: str, options: dict[str, Any]) -> LoadedModel:
    result = call_factory(base, options)
    name = base.rsplit(":", 1)[1]
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3) \
            or not isinstance(result[0], torch.nn.Module):
        raise ModelSpecError(f"factory {base} must return (model, example_inputs)"
                             f" with an nn.Module, got {type(result).__name__}")
    model, args = result[0], result[1]
    kwargs = dict(result[2]) if len(result) == 3 and result[2] else {}
    model.eval()
    return LoadedModel(spec, "factory", name.split(".")[-1], model, _as_args(args, spec), kwargs,
                       options=options)


def _as_args(args: Any, spec: str) -> tuple:
    if isinstance(args, torch.Tensor):
        return (args,)
    if isinstance(args, list):
        return tuple(args)
    if not isinstance(args, tuple):
        raise ModelSpecError(f"MODEL '{spec}': example inputs must be a tensor or a tuple, got "
                             f"{type(args).__name__}")
    return args


# ----------------------------------------------------------------------------------- files
def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ModelSpecError(f"no such file: {path}")
    if not os.path.isfile(path):
        raise ModelSpecError(f"not a file: {path}")


def _load_onnx(spec: str, path: str, options: dict[str, Any]) -> LoadedModel:
    """An ONNX file: imported by ``from_onnx`` (which validates it as untrusted input) with
    random inputs; ``?name=N`` options size the symbolic input dims."""
    _check_file(path)
    for key, value in options.items():  # ?sym=N: the size of a symbolic input dim
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelSpecError(f"{path}: option {key}={value!r} must be a non-negative "
                                 f"integer (the size of the symbolic input dim '{key}')")
    import onnx

    try:  # a quick parse for a clear message; the importer reads external data safely itself
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelSpecError(f"{path} is not a valid ONNX model: {type(exc).__name__}: "
                             f"{_first_line(exc) or 'cannot parse the protobuf'}") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelSpecError(f"{path} is not a valid ONNX model: it has no graph")
    del proto
    try:
        importer = importlib.import_module("graphopt.onnx.importer")
    except ModuleNotFoundError as exc:
        raise ModelSpecError("reading ONNX models is unavailable: graphopt.onnx.importer is not "
                             "part of this build") from exc
    name = os.path.splitext(os.path.basename(path))[0]
    start = time.perf_counter()
    graph = importer.from_onnx(path)
    trace_s = time.perf_counter() - start
    args = random_inputs(graph, options)
    return LoadedModel(spec, "onnx", name, None, args, {}, onnx_path=os.path.abspath(path),
                       options=options, trace_s=trace_s, _graph=graph)


def _load_model_dir(spec: str, path: str, options: dict[str, Any]) -> LoadedModel:
    """A model directory (``graphopt.save``; manifest and hashes checked) with random inputs;
    ``?name=N`` options size the symbolic input dims."""
    from graphopt.artifact import is_model_dir, load_model_dir

    if not is_model_dir(path):
        raise ModelSpecError(f"{path} is a directory without manifest.json: not a model "
                             "directory (graphopt.save / graphopt optimize -o DIR/ write them)")
    start = time.perf_counter()
    graph = load_model_dir(path)
    trace_s = time.perf_counter() - start
    name = os.path.basename(os.path.normpath(path))
    return LoadedModel(spec, "modeldir", name, None, random_inputs(graph, options), {},
                       options=options, trace_s=trace_s, _graph=graph)


def random_inputs(graph: Graph, sizes: dict[str, Any] | None = None, seed: int = 0) -> tuple:
    """Random inputs matching ``graph.inputs``; size symbols take ``sizes[name]`` or 1.

    Floats are standard normal, integers uniform in [0, 10), booleans fair coins. Each input's
    size is checked against the memory budget (:mod:`graphopt.limits`) before it is allocated:
    a model can declare a ``float32[100000, 100000]`` input.

    Raises:
        ModelSpecError: a size that is not a non-negative integer, or a dim that does not
            evaluate to one.
        ResourceLimitError: an input over the memory budget.
    """
    import sympy

    from graphopt.limits import check_shape

    sizes = dict(sizes or {})
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelSpecError(f"size {key}={value!r} must be a non-negative integer")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for value in graph.inputs:
        shape = []
        for dim in value.type.shape:
            if isinstance(dim, int):
                shape.append(dim)
                continue
            if not isinstance(dim, sympy.Expr):  # never parse text here
                raise ModelSpecError(f"input '{value.name}' has a dim {dim!r} that is not a size")
            concrete = dim.subs({s: int(sizes.get(str(s), 1)) for s in dim.free_symbols})
            if not concrete.is_Integer or int(concrete) < 0:
                raise ModelSpecError(f"input '{value.name}': dim {dim} is {concrete} for the "
                                     f"sizes given; pass non-negative ?name=N sizes")
            shape.append(int(concrete))
        dtype = value.dtype.torch
        check_shape(shape, value.dtype.itemsize, f"random input '{value.name}' {shape}")
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, 10, shape, generator=gen).to(dtype))
    return tuple(out)


class PickleLoadWarning(UserWarning):
    """A file is being loaded with pickle because the caller said it trusts it."""


def _load_pt2(spec: str, path: str, trust_pickle: bool) -> LoadedModel:
    """A torch.export archive, only if the caller trusts it.

    ``torch.export.load`` can run code from the file (torch 2.13,
    ``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``): weights
    and constants flagged ``use_pickle`` are read with ``torch.load(weights_only=False)``,
    "opaque" constants with ``pickle.loads``, torchbind objects with
    ``torch._C._pickle_load_obj``, and the example inputs with ``torch.load(weights_only=True)``
    that *falls back to* ``weights_only=False`` when the safe load fails. The archive's own
    flags choose these paths, so a crafted .pt2 executes its payload. Hence the opt-in; the
    safe routes for untrusted models are ONNX files and graphopt's own formats.
    """
    import warnings
    import zipfile

    from graphopt.errors import UnsafeInputError

    _check_file(path)
    if not zipfile.is_zipfile(path):
        raise ModelSpecError(f"{path} is not a torch.export archive (.pt2): not a zip file")
    if not trust_pickle:
        raise UnsafeInputError(
            f"refusing to load {path}: torch.export.load unpickles .pt2 files, which runs any "
            "code the file contains. If you trust its source, pass --trust-pt2 (CLI) or "
            "load_model(spec, trust_pickle=True); otherwise ask for an ONNX export")
    warnings.warn(f"loading {path} with pickle (trust_pickle=True): it can run code",
                  PickleLoadWarning, stacklevel=3)
    from graphopt.frontend import import_exported_program

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.load(path)
    except Exception as exc:
        raise ModelSpecError(f"{path} is not a torch.export archive (.pt2): "
                             f"{type(exc).__name__}: {_first_line(exc)}") from exc
    example = getattr(ep, "example_inputs", None)
    if example is None:
        raise ModelSpecError(f"{path} stores no example inputs; re-export it with torch 2.4+")
    args, kwargs = example
    start = time.perf_counter()
    name = os.path.splitext(os.path.basename(path))[0]
    graph = import_exported_program(ep.run_decompositions({}), name=name)
    trace_s = time.perf_counter() - start
    return LoadedModel(spec, "pt2", name, ep.module(), tuple(args), dict(kwargs or {}),
                       trace_s=trace_s, _graph=graph)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


__all__ = ["LoadedModel", "ModelSpecError", "PickleLoadWarning", "SPEC_HELP", "call_factory",
           "is_factory", "load_model", "parse_value", "random_inputs", "split_spec"]
