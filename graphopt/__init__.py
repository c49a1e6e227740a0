"""graphopt: a compiler-style graph optimization toolkit for PyTorch models.

Typical use::

    import graphopt
    graph = graphopt.trace(model, (x,))
    print(graph)                     # the typed IR as text
    out = graphopt.run(graph, x)     # reference interpreter, same structure as model(x)
    module = graphopt.to_torch(graph)
"""

from graphopt.errors import (
    GraphoptError,
    InputMismatchError,
    ParseError,
    TypeInferenceError,
    UnsupportedOpError,
    VerificationError,
)
from graphopt.frontend import trace
# Imported eagerly: the submodule graphopt.compile would otherwise shadow the function.
from graphopt.compile import Target, compile  # noqa: E402  (cheap: backends load on first use)
from graphopt.interpreter import run
from graphopt.ir import DType, Graph, Node, TensorType, Value
from graphopt.transform import PassManager, bisect, optimize, register_pass
# Eager like compile: the package graphopt.prune would otherwise shadow the function. It is light
# (numpy + dataclasses); the analysis, scipy and training code load on first use.
from graphopt.prune import FinetuneConfig, PruneConfig, finetune, prune  # noqa: E402

from graphopt.version import __version__  # noqa: E402


def parse(text: str, constants=None) -> Graph:
    """Parse IR text (the form ``print(graph)`` writes) into a Graph."""
    from graphopt.ir.parser import parse_graph

    return parse_graph(text, constants)


def to_torch(graph: Graph):
    """Lower ``graph`` to a regular ``torch.nn.Module`` (weights as parameters/buffers)."""
    from graphopt.backends.torch_module import to_torch as _to_torch

    return _to_torch(graph)


def to_onnx(graph: Graph, path=None, opset: int | None = None, **options):
    """Lower ``graph`` to an ``onnx.ModelProto`` (saved to ``path`` when given); see
    ``graphopt.onnx.export.to_onnx`` for the options."""
    from graphopt.onnx.export import to_onnx as _to_onnx

    return _to_onnx(graph, path, opset, **options)


def quantize(graph: Graph, mode: str = "dynamic", **options):
    """Quantize ``graph`` (a copy): mode ``dynamic``, ``static``, ``weight-only``, ``fp16`` or
    ``bf16``; see ``graphopt.quant.api.quantize`` and docs/quantization.md."""
    from graphopt.quant import quantize as _quantize

    return _quantize(graph, mode, **options)


def compress(graph: Graph, path, *, bits: int | None = None, conv_bits: int = 8,
             bias_bits: int | None = None, exclude=(), calibration=None,
             error_budget: float | None = None):
    """Write ``graph`` to ``path`` as a compressed model file (``.gcm``); returns the
    per-constant size report (``graphopt.backends.compressed_model.CompressedFile``).

    A graph without codebooks is first quantized with ``graphopt.quantize(graph, "codebook",
    bits=, conv_bits=, bias_bits=, exclude=, calibration=, error_budget=)`` (Deep Compression
    weight sharing; prune first, with ``graphopt.prune``, for the zeros that sparse coding drops). A
    graph that already has them (quantized, then fine-tuned with ``graphopt.finetune``) is
    written as it is. Codebook indices are stored sparse + Huffman coded, other constants
    raw or deflated; ``graphopt.load(path)`` reads the graph back. See docs/compression.md."""
    from graphopt.backends.compressed_model import save_compressed
    from graphopt.ops.registry import CODEBOOK

    if not any(node.has_trait(CODEBOOK) for node in graph.nodes):
        graph = quantize(graph, "codebook", bits=bits, conv_bits=conv_bits, bias_bits=bias_bits,
                         exclude=exclude, calibration=calibration, error_budget=error_budget)
    return save_compressed(graph, path)


def save(model, directory, *, pipeline: str | None = None, target=None,
         figures: dict | None = None, onnx: bool | None = None, native: bool | None = None,
         int8_weights: str | None = None):
    """Save ``model`` (a Graph, or a module ``graphopt.compile`` made) as a versioned model
    directory: the graph (IR text + safetensors weights), a manifest (format version, input /
    output signature with dynamic dims, ``target``, the ``pipeline`` that made it, your
    accuracy / latency ``figures``, the sha256 of every file) and, with ``onnx=True`` /
    ``native=True`` (default: the backend ``model`` was compiled for), those lowerings beside
    it. No pickle. ``graphopt.load(directory)`` verifies it. Returns the manifest (a dict).
    ``int8_weights``: "s8" / "u8" int8 weights in the ONNX file (``to_onnx``; default: as the
    onnxruntime module was compiled, else "s8"). See graphopt/artifact.py and docs/artifacts.md.

    A decoder (``graphopt.trace_decoder``'s DecoderGraph, or its compiled form) is saved as a
    *decoder directory*: its step graph plus the manifest's ``decoder`` section (cache geometry,
    vocabulary, stop and pad tokens; lowerings only with ``onnx=True`` / ``native=True``);
    ``graphopt.load`` gives the DecoderGraph back. See graphopt/decoding/directory.py."""
    from graphopt.decoding.runner import CompiledDecoder
    from graphopt.decoding.trace import DecoderGraph

    if isinstance(model, (DecoderGraph, CompiledDecoder)):
        from graphopt.decoding.directory import save_decoder

        return save_decoder(model, directory, pipeline=pipeline, target=target, figures=figures,
                            onnx=bool(onnx), native=bool(native))
    from graphopt.artifact import save_model_dir

    return save_model_dir(model, directory, pipeline=pipeline, target=target, figures=figures,
                          onnx=onnx, native=native, int8_weights=int8_weights)


def load(path):
    """Read a graph from a model directory (``graphopt.save``: manifest, hashes and format
    version checked first), a compressed model (``.gcm``, ``graphopt.compress``), a torch
    bundle (``.graphopt``, ``graphopt.backends.torch_bundle``) or an ONNX model (``.onnx``).
    A decoder directory (``graphopt.save(decoder, DIR)``) gives its ``DecoderGraph`` (step
    graph and decoder metadata, all checked), ready for ``.compile()`` and ``generate``."""
    import os

    from graphopt.codec.container import MAGIC

    where = os.fspath(path)
    if os.path.isdir(where):
        from graphopt.decoding.directory import load_directory

        return load_directory(where)
    try:
        with open(where, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as exc:
        raise GraphoptError(f"{where}: cannot read the file ({exc.strerror or exc})") from None
    if head == MAGIC or where.endswith(".gcm"):
        from graphopt.backends.compressed_model import load_compressed

        return load_compressed(where)
    if where.endswith(".graphopt"):
        from graphopt.backends.torch_bundle import load_graph

        return load_graph(where)
    if where.endswith(".onnx"):
        return from_onnx(where)
    raise GraphoptError(f"{where}: not a graphopt file graphopt.load reads (a model "
                        "directory, a .gcm compressed model, a .graphopt bundle or an .onnx "
                        "model); a native artifact (.npz) loads with graphopt.native.load")


def tune(graph: Graph, data, **options):
    """Search pipelines (pruning, quantization mode and budget, backend) for ``graph`` against
    an accuracy goal, on Optuna; returns a ``TuneResult`` (Pareto front, chosen point and its
    graph). See ``graphopt.autotune.study.tune`` for the options and docs/tuning.md."""
    from graphopt.autotune import tune as _tune

    return _tune(graph, data, **options)


def check_speed(before: Graph, after: Graph, args, **options):
    """Time ``after`` (a compressed graph) against ``before`` (its input) on one backend;
    warns when it is not faster. See ``graphopt.bench.speedcheck.check_speed``."""
    from graphopt.bench.speedcheck import check_speed as _check_speed

    return _check_speed(before, after, args, **options)


def benchmark(model, args=(), kwargs=None, **options):
    """Benchmark ``model`` on several backends (eager, torch-compile, onnxruntime, graphopt-*);
    returns a ``BenchmarkReport``. See ``graphopt.bench.harness.benchmark`` for the options."""
    from graphopt.bench.harness import benchmark as _benchmark

    return _benchmark(model, args, kwargs, **options)


def trace_decoder(model, max_length: int = 256):
    """Trace a causal language model into a decoder step graph with an explicit KV cache; see
    ``graphopt.decoding.trace.trace_decoder``. ``.compile(backend=...)`` it for ``generate``."""
    from graphopt.decoding.trace import trace_decoder as _trace_decoder

    return _trace_decoder(model, max_length=max_length)


def generate(compiled, input_ids, max_new_tokens: int = 32, **options):
    """Generate tokens with a compiled decoder (greedy or sampled, stop tokens, streaming);
    see ``graphopt.decoding.generate.generate`` for the options."""
    from graphopt.decoding.generate import generate as _generate

    return _generate(compiled, input_ids, max_new_tokens, **options)


def __getattr__(name: str):
    # Loaded on first use, like quantize and benchmark: the quantization library and the
    # benchmark harness are not imported by ``import graphopt``.
    if name == "QuantizeConfig":
        from graphopt.quant.config import QuantizeConfig

        return QuantizeConfig
    if name == "BenchmarkConfig":
        from graphopt.bench.config import BenchmarkConfig

        return BenchmarkConfig
    raise AttributeError(f"module 'graphopt' has no attribute '{name}'")


def from_onnx(model_or_path, **options) -> Graph:
    """Import an ONNX model (``ModelProto``, bytes or path) as a Graph; see
    ``graphopt.onnx.importer.from_onnx`` for the options."""
    from graphopt.onnx.importer import from_onnx as _from_onnx

    return _from_onnx(model_or_path, **options)


__all__ = [
    "DType", "Graph", "GraphoptError", "InputMismatchError", "Node", "ParseError", "TensorType",
    "compile", "from_onnx", "to_onnx",
    "TypeInferenceError", "UnsupportedOpError", "Value", "VerificationError", "parse", "run",
    "to_torch", "trace", "optimize", "benchmark", "bisect", "PassManager", "register_pass",
    "prune", "finetune", "quantize", "Target", "QuantizeConfig", "PruneConfig",
    "FinetuneConfig", "BenchmarkConfig", "compress", "save", "load", "check_speed",
    "tune", "trace_decoder", "generate",
]

# Register the built-in passes (graphopt.passes; mapped from passes/ in a source checkout).
from graphopt.transform.registry import load_pass_library as _load_pass_library  # noqa: E402

_load_pass_library()
