"""Helpers shared by the CLI subcommands: errors, MODEL loading, pipeline checks, output."""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any

from graphopt.errors import GraphoptError


class CliError(GraphoptError):
    """A user error the CLI reports in one line; ``code`` is the exit status (2: bad input)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def check_pipeline(text: str | None) -> Any:
    """Parse pipeline text early (before loading a model) so that typos fail fast."""
    if text is None:
        return None
    from graphopt.transform.pipeline import parse_pipeline

    parse_pipeline(text)  # raises UnknownPassError / PipelineError with a clear message
    return text


def add_model_argument(parser) -> None:
    """The MODEL positional and ``--trust-pt2``, shared by every command that loads a model."""
    parser.add_argument("model", metavar="MODEL", help="the model (see `graphopt --help`)")
    parser.add_argument("--trust-pt2", action="store_true",
                        help="allow a .pt2 MODEL: torch.export.load unpickles it, which runs "
                        "any code the file contains; only for files from a source you trust")


# The graphopt.Target backend a saved model runs on, by -o format ("torch": a .graphopt bundle
# runs each op's torch implementation, as the interpreter does).
TARGET_BACKENDS = {"onnx": "onnxruntime", "native": "native", "torch": "interpreter"}


def add_target_arguments(parser, threads_help: str = "intra-op threads") -> None:
    """``--threads`` and ``--isa``: with the command's backend, one graphopt.Target
    (``cli_target``) for compiling, benchmarking and quantizing."""
    from graphopt.compile import ISAS

    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"{threads_help} (default: torch's default)")
    parser.add_argument("--isa", choices=ISAS, default="auto",
                        help="native kernels' instruction set to plan for, checked against "
                        "this machine (default: %(default)s: whatever it runs)")


def cli_target(opts, backend: str = "onnxruntime"):
    """The command's one ``graphopt.Target``: ``backend`` with ``--isa`` and ``--threads``,
    checked before the slow work (a thread count past the budget: ResourceLimitError; an ISA
    this process does not run: CliError; both exit 2)."""
    from graphopt.compile import Target
    from graphopt.limits import check_threads

    if opts.threads is not None:
        check_threads(opts.threads, "--threads")
    target = Target(backend, opts.isa, opts.threads)
    try:
        target.check_host()
    except GraphoptError as exc:  # BackendOptionError: an ISA this process does not run
        raise CliError(f"--isa {opts.isa}: {exc}") from exc
    return target


def load(spec: str, *, trust_pt2: bool = False, need_graph: bool = True, quiet: bool = False):
    """Resolve MODEL; with ``need_graph`` also trace/import it (timed on stderr).

    A ``.pt2`` MODEL is refused (UnsafeInputError, exit 2) unless ``trust_pt2``; when trusted,
    a warning line says that the file is unpickled.
    """
    from graphopt.model_loader import load_model, split_spec

    if trust_pt2 and split_spec(spec)[0].lower().endswith(".pt2"):
        info(f"warning: --trust-pt2: unpickling {spec} (this runs any code it contains)")
    start = time.perf_counter()
    loaded = load_model(spec, trust_pickle=trust_pt2)
    if need_graph:
        loaded.graph()
        if not quiet:
            info(f"loaded {spec}: {len(loaded.graph().nodes)} nodes "
                 f"({time.perf_counter() - start:.1f} s)")
    return loaded


def load_optimized(opts, pipeline):
    """MODEL (``opts.model``) loaded and traced, then run through ``pipeline`` (a checked
    pipeline, or None for none): ``(loaded, graph)``."""
    loaded = load(opts.model, trust_pt2=opts.trust_pt2, quiet=opts.quiet)
    graph = loaded.graph()
    if pipeline:
        graph, _ = optimize_with_report(graph, pipeline)
    return loaded, graph


def optimize_with_report(graph, pipeline: str):
    import graphopt

    optimize = getattr(graphopt, "optimize", None)
    if optimize is None:
        raise CliError("optimization passes are not part of this build", code=1)
    return optimize(graph, pipeline, report=True)


def paragraph(text: str, width: int = 88) -> str:
    """``text`` wrapped for a RawDescriptionHelpFormatter description."""
    import textwrap

    return textwrap.fill(" ".join(text.split()), width)


def info(text: str) -> None:
    """Progress/status lines go to stderr so that stdout stays the command's result."""
    sys.stdout.flush()  # keep the order when both go to one terminal
    print(text, file=sys.stderr, flush=True)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def ensure_parent(path: str) -> None:
    """Fail before the (slow) work if ``path`` cannot be written: no folder, or a symlink."""
    from graphopt.fileio import safe_output_path

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"cannot write {path}: folder {folder} does not exist")
    safe_output_path(path)  # UnsafeInputError (exit 2) for a symlinked output


# ------------------------------------------------------------------------------- outputs
# What -o OUT's extension means. Torch outputs are .graphopt bundles (IR text + safetensors
# weights, loaded without pickle): a torch.save'd .pt would need torch.load(weights_only=False)
# to read, which runs code from the file, so graphopt does not write those.
OUTPUT_BACKENDS = {".onnx": "onnx", ".graphopt": "torch"}
_PICKLE_SUFFIXES = (".pt", ".pth")


def output_backend(path: str, backend: str | None = None, *, flag: bool = True) -> str:
    """The backend to save ``path`` for: ``backend`` if given, else from the extension.

    ``flag``: whether the command has a ``--backend`` option to suggest.
    """
    if is_model_dir_output(path):
        return backend or "torch"  # the graph itself (+ the backend's file with --backend)
    if backend is not None:
        return backend
    ext = os.path.splitext(path)[1].lower()
    if ext in OUTPUT_BACKENDS:
        return OUTPUT_BACKENDS[ext]
    if ext in _PICKLE_SUFFIXES:
        raise CliError(f"'{path}': torch outputs are saved as pickle-free .graphopt bundles "
                       f"(a {ext} would be a pickle); name it "
                       f"{os.path.splitext(path)[0]}.graphopt")
    if not flag:
        raise CliError(f"cannot tell the format from '{path}'; name it .onnx or .graphopt")
    raise CliError(f"cannot tell the backend from '{path}'; use --backend onnx|native|torch "
                   "(or name it .onnx / .graphopt)")


def native_saver():
    """``save(graph, path)`` of the native backend, or a CliError saying it is unavailable."""
    from graphopt.bench.backends import BackendUnavailable, _native_factory

    try:
        factory = _native_factory()
    except BackendUnavailable as exc:
        raise CliError(f"--backend native is not available: {exc}", code=1) from exc

    def save(graph, path, threads: int | None = None):
        compiled = factory(graph, threads=threads)
        if not callable(getattr(compiled, "save", None)):
            raise CliError("--backend native is not available: the native backend cannot "
                           "serialize compiled models (no save())", code=1)
        compiled.save(path)

    return save


def is_model_dir_output(path: str) -> bool:
    """``-o DIR``: a path ending in a separator, an existing directory or a name without an
    extension is saved as a model directory (``graphopt.save``)."""
    return (path.endswith(("/", os.sep)) or os.path.isdir(path)
            or not os.path.splitext(path.rstrip("/" + os.sep))[1])


def save_output(graph, path: str, backend: str, *, opset: int | None = None,
                threads: int | None = None, pipeline: str | None = None,
                int8_weights: str = "s8") -> str:
    """Save ``graph`` for ``backend`` at ``path``; returns "PATH (SIZE[, + DATA FILE])".

    Every file is written atomically (temp file + rename) and never through a symlink
    (``graphopt.fileio``): an error leaves any previous output untouched. A model directory
    (``is_model_dir_output``) holds the graph, ``backend``'s file (onnx, native) and a
    manifest naming ``pipeline``. ``int8_weights``: the ONNX int8 weight encoding of a .onnx
    file or a model directory's model.onnx (``graphopt.onnx.int8_weights``).
    """
    from graphopt.fileio import atomic_output_path

    extra = ""
    if is_model_dir_output(path):
        import graphopt

        target = (None if backend == "torch"  # (the graph alone: no target recorded)
                  else graphopt.Target(TARGET_BACKENDS[backend], threads=threads))
        manifest = graphopt.save(graph, path, pipeline=pipeline, target=target,
                                 onnx=backend == "onnx", native=backend == "native",
                                 int8_weights=int8_weights)
        size = sum(f["bytes"] for f in manifest["files"].values())
        return (f"{path} (model directory: {', '.join(manifest['files'])}, manifest.json; "
                f"{human_size(size)})")
    if backend == "onnx":
        import onnx

        import graphopt

        model = graphopt.to_onnx(graph, path, opset=opset, int8_weights=int8_weights)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            extra = f", + {os.path.basename(path)}.data"
    elif backend == "torch":
        import graphopt
        from graphopt.backends.torch_module import save_module

        graphopt.to_torch(graph)  # fail now, not at load time, if an op cannot be lowered
        save_module(graph, path)
    elif backend == "native":
        save = native_saver()
        with atomic_output_path(path) as temp:  # the native saver writes a named file
            save(graph, temp, threads)
    else:
        raise CliError(f"unknown backend '{backend}' for -o; use onnx, native or torch")
    return f"{path} ({human_size(os.path.getsize(path))}{extra})"


def prepare_output(path: str, backend: str | None = None, *, flag: bool = True) -> str:
    """What ``-o path`` is saved as (``output_backend``), checked before the slow work: the
    folder exists and is no symlink, and a native backend is available when one is needed."""
    backend = output_backend(path, backend, flag=flag)
    ensure_parent(path.rstrip("/" + os.sep) or path)
    if backend == "native":
        native_saver()
    return backend


def write_output(graph, path: str, backend: str, what: str, *, opset: int | None = None,
                 threads: int | None = None, pipeline: str | None = None,
                 int8_weights: str = "s8") -> None:
    """Save ``graph`` (``save_output``), print "wrote PATH (SIZE): WHAT" and how to load it.
    ``threads``: the native backend's plan threads."""
    written = save_output(graph, path, backend, opset=opset, threads=threads,
                          pipeline=pipeline, int8_weights=int8_weights)
    print(f"wrote {written}: {what}")
    saved_hint(backend, path)


def saved_hint(backend: str, path: str) -> None:
    """How to load what was just written (torch bundles have their own loader)."""
    if is_model_dir_output(path):
        info("load it with graphopt.load(DIR) (manifest, hashes and format version checked)")
    elif backend == "torch":
        info("load it with graphopt.backends.torch_module.load_module(path) -> nn.Module (no "
             "pickle: safe to share)")


def add_speed_arguments(parser) -> None:
    """``--check-speed`` / ``--require-faster`` (graphopt.bench.speedcheck)."""
    parser.add_argument("--check-speed", action="store_true",
                        help="time the result against its input on the output's backend "
                        "(onnx: onnxruntime; native and torch: native) and warn when it is not "
                        "faster")
    parser.add_argument("--require-faster", action="store_true",
                        help="like --check-speed, but fail (exit 1, nothing written) when the "
                        "result is not faster")


def speed_check(opts, before, after, args, backend: str, threads: int | None = None) -> None:
    """Run the speed check the options ask for; raises CliError (exit 1) with
    --require-faster when the result is slower."""
    if not (opts.check_speed or opts.require_faster):
        return
    from graphopt.bench.speedcheck import SpeedRegressionError, check_speed

    target = "onnxruntime" if backend == "onnx" else "native"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the verdict is printed below
            result = check_speed(before, after, args, backend=target, threads=threads,
                                 require_faster=opts.require_faster)
    except SpeedRegressionError as exc:
        raise CliError(str(exc), code=1) from exc
    info(str(result) if result.faster else f"warning: {result}: not faster than its input")
