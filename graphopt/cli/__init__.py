"""The ``graphopt`` command line: optimize, bench, show, passes, explain, prune, quantize,
compress, inspect, serve, export, tune, drift, trace-decoder, generate.

``main(argv)`` returns the exit status (the console script ``graphopt = graphopt.cli:main``
passes it to ``sys.exit``). Errors a user can cause (missing file, corrupt ONNX or artifact,
unknown pass, backend, zoo model or factory, a .pt2 without --trust-pt2, an input over the
memory or thread budget) print ONE line on stderr and exit with status 2; failures while
running print one line and exit with 1. ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from graphopt.cli._common import CliError

_DESCRIPTION = """\
graphopt: a compiler-style graph optimizer for PyTorch models.
Models are traced (torch.export) into graphopt's typed SSA IR, rewritten by passes, and lowered
to ONNX/onnxruntime, a native C++ runtime, or back to PyTorch."""

_EPILOG = """\
MODEL is one of:
  zoo:mlp                      built-in example (zoo: bert gpt2 resnet50 mobilenetv2 mlp
  zoo:bert?layers=2&seq=32       convzoo tensorops); ?key=value&... are its options
  model.onnx[?seq=128]         an ONNX file (?NAME=N sets symbolic input dims, default 1)
  program.pt2                  torch.export.save'd ExportedProgram (stored example inputs);
                                 unpickled, so refused unless you pass --trust-pt2
  mypkg.models:make            a factory returning (model, example_inputs)
  path/to/file.py:make         the same, from a file
Quote a MODEL containing ? or & in the shell: 'zoo:bert?layers=2&seq=32'.

examples:
  graphopt passes
  graphopt show zoo:mlp?width=64 --pipeline default
  graphopt optimize zoo:bert?layers=2 -o bert.onnx
  graphopt bench zoo:mobilenetv2 --backends eager,onnxruntime,graphopt-onnxruntime --json r.json
  graphopt explain zoo:mlp --rule mul-one
  graphopt quantize zoo:resnet50 -o r50.onnx --mode static --calibration calib.npz
  graphopt optimize zoo:mlp -o mlp.graphopt   (torch: load_module('mlp.graphopt'), no pickle)
  graphopt compress zoo:mlp -o mlp.gcm --sparsity 0.9   (graphopt.load('mlp.gcm'))
  graphopt trace-decoder gpt2-tiny -o lm/ && graphopt generate lm/ --input-ids 1,2,3

Run `graphopt COMMAND --help` for a command's options."""

# Exceptions that mean "the input is wrong" (exit 2) rather than "something failed" (exit 1):
# a malformed or hostile file (artifact, IR text, ONNX), one that would run code or leave its
# folder, or one asking for more memory/threads than the budget.
_BAD_INPUT = ("ModelSpecError", "UnknownPassError", "PipelineError", "PassOptionError",
              "UnknownBackendError", "OnnxImportError", "QuantizationError", "ArtifactError",
              "UnsafeInputError", "ResourceLimitError", "ParseError", "CompressionError",
              "GenerationError")
# OS errors that are the user's input (a path) rather than the machine failing.
_BAD_PATH = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
             FileExistsError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage errors are bad input too)."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    import graphopt
    from graphopt.cli import (bench, compress, drift, export, generate, optimize, passes, prune,
                              quantize, serve, show, trace_decoder, tune)

    parser = _Parser(prog="graphopt", description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"graphopt {graphopt.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks and library warnings")
    # --debug is accepted after the subcommand too (SUPPRESS keeps the top-level value).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks and library warnings")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                parser_class=_Parser)
    optimize.add_parser(sub, common)
    bench.add_parser(sub, common)
    show.add_parser(sub, common)
    passes.add_passes_parser(sub, common)
    passes.add_explain_parser(sub, common)
    prune.add_parser(sub, common)
    quantize.add_parser(sub, common)
    compress.add_parsers(sub, common)
    serve.add_parser(sub, common)
    export.add_parser(sub, common)
    tune.add_parser(sub, common)
    drift.add_parser(sub, common)
    trace_decoder.add_parser(sub, common)
    generate.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        opts = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if opts.command is None:
        parser.print_help()
        return 2
    if debug:
        return int(opts.run(opts) or 0)
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        try:
            return int(opts.run(opts) or 0)
        except KeyboardInterrupt:
            print("graphopt: interrupted", file=sys.stderr)
            return 130
        except CliError as exc:
            return _fail(str(exc), exc.code)
        except OSError as exc:  # a path given on the command line, or the disk (full, I/O)
            code = 2 if isinstance(exc, _BAD_PATH) else 1
            return _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc),
                         code)
        except Exception as exc:
            from graphopt.errors import GraphoptError

            if isinstance(exc, GraphoptError):
                code = 2 if any(c.__name__ in _BAD_INPUT for c in type(exc).__mro__) else 1
                return _fail(_one_line(str(exc)), code)
            return _fail(f"internal error: {type(exc).__name__}: {_one_line(str(exc))} "
                         "(rerun with --debug for the traceback)", 1)


def _one_line(message: str) -> str:
    """The first line of a message; a heading ending in ':' gets its first detail line too."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown error"
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text += " " + lines[1]
    if len(lines) > (2 if lines[0].endswith(":") else 1):
        text += " [--debug shows more]"
    return text


def _fail(message: str, code: int) -> int:
    print(f"graphopt: error: {_one_line(message)}", file=sys.stderr)
    return code


__all__ = ["CliError", "build_parser", "main"]
