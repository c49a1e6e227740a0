"""``graphopt quantize MODEL -o OUT --mode static --observer entropy --calibration data.npz``."""

from __future__ import annotations

import argparse
import os

from graphopt.cli._common import (
    TARGET_BACKENDS,
    CliError,
    add_model_argument,
    add_speed_arguments,
    add_target_arguments,
    check_pipeline,
    cli_target,
    load_optimized,
    paragraph,
    prepare_output,
    speed_check,
    write_output,
)

_MODES = ("dynamic", "static", "weight-only", "fp16", "bf16", "bf16-compute", "codebook", "auto")
_AUTO_MODES = ("dynamic", "static", "weight-only", "bf16-compute")
_OBSERVERS = ("minmax", "percentile", "entropy", "mse")


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "quantize", parents=[common], help="quantize a model (int8 / int4 / fp16) and save it",
        description=paragraph(
            "Trace/import MODEL, optimize it (--pipeline, default: default), quantize it and "
            "save it (.onnx, or .graphopt: a torch module loaded without pickle). --mode static "
            "calibrates activation ranges on "
            "--calibration, a .npz with one array per graph input (named after the input, or "
            "arr_0, arr_1, ... in input order) whose first axis indexes the calibration items. "
            "With --error-budget the most sensitive layers fall back to float until the mean "
            "1 - cosine between float and quantized outputs over the calibration data fits. "
            "The report lists every layer: quantized, or float and why."),
        epilog="examples:\n"
        "  graphopt quantize zoo:resnet50 -o r50.int8.onnx --mode static --calibration c.npz\n"
        "  graphopt quantize m.onnx -o m.int8.onnx --mode static --observer percentile "
        "--percentile 99.9 \\\n      --calibration c.npz --error-budget 0.01\n"
        "  graphopt quantize 'zoo:bert?layers=2' -o bert.onnx --mode dynamic\n"
        "  graphopt quantize zoo:minilm -o minilm.int8.onnx --mode dynamic --per-token\n"
        "  graphopt quantize zoo:mlp -o mlp.onnx --mode weight-only --bits 4\n"
        "  graphopt quantize zoo:minilm -o minilm.native --mode bf16-compute --backend native\n"
        "  graphopt quantize zoo:mlp -o mlp.native --backend native --threads 2\n"
        "  graphopt quantize zoo:mlp -o mlp.native --mode auto --calibration c.npz "
        "--modes dynamic,weight-only",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(p)
    _add_output_arguments(p)
    add_target_arguments(p, "threads of the calibration and sensitivity runs (and of a "
                         "native plan)")
    p.add_argument("--mode", choices=_MODES, default="dynamic",
                   help="quantization mode (default: %(default)s)")
    p.add_argument("--observer", choices=_OBSERVERS, default="minmax",
                   help="static: activation range observer (default: %(default)s)")
    p.add_argument("--percentile", type=float, default=99.99, metavar="P",
                   help="static, --observer percentile: the percentile (default: %(default)s)")
    p.add_argument("--calibration", metavar="NPZ",
                   help="calibration inputs (.npz); required for static and --error-budget")
    p.add_argument("--error-budget", type=float, default=None, metavar="E",
                   help="largest mean 1 - cosine vs float; sensitive layers fall back")
    p.add_argument("--sensitivity", choices=("local", "end-to-end"), default="local",
                   help="how layers are ranked for fallback (default: %(default)s)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="keep layers whose node or weight name matches GLOB float (repeatable)")
    p.add_argument("--per-token", action="store_true",
                   help="dynamic: one activation scale / zero point per token (row), not per "
                        "tensor (more accurate on transformers)")
    p.add_argument("--bits", type=int, default=None, metavar="B",
                   help="weight-only: 4 (default) or 8 bits; codebook: bits of fully connected "
                   "weights, 1-12 (default 5; convolutions take 8)")
    p.add_argument("--block-size", type=int, default=32, metavar="B",
                   help="weight-only: block size along K (default: %(default)s)")
    _add_weight_only_options(p)
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pipeline run before quantizing (default: %(default)s; 'none' skips)")
    _add_speed_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the report")
    p.set_defaults(run=run)


def _add_weight_only_options(p) -> None:
    p.add_argument("--act-bits", type=int, choices=(0, 8), default=0,
                   help="weight-only: 8 quantizes activations per block (integer products, "
                   "MatMulNBits accuracy_level 4); 0 keeps them float (default)")
    p.add_argument("--rounding", choices=("nearest", "gptq"), default="nearest",
                   help="weight-only: gptq compensates rounding errors on the --calibration "
                   "inputs (needs several times as many rows per layer as inputs; default: "
                   "%(default)s)")


def _add_speed_options(p) -> None:
    p.add_argument("--modes", default=None, metavar="M[,M...]",
                   help="auto: the modes each layer chooses among by its measured cost and "
                   f"error (default: {','.join(_AUTO_MODES)})")
    p.add_argument("--speed-aware", action="store_true",
                   help="time each layer alone, float vs quantized (cached per machine), then "
                   "the float, all-quantized and per-layer-choice graphs on the backend (needs "
                   "--calibration), and keep the fastest: layers that do not pay stay float")
    add_speed_arguments(p)


def run(opts) -> int:
    import graphopt

    backend = prepare_output(opts.output, opts.backend)  # fails before the (slow) trace
    target = cli_target(opts, TARGET_BACKENDS[backend])
    if opts.mode in ("static", "auto") and not opts.calibration:
        raise CliError(f"--mode {opts.mode} needs --calibration FILE.npz (one array per graph "
                       "input, calibration items along axis 0)")
    modes = _auto_modes(opts)
    if opts.error_budget is not None and not opts.calibration:
        raise CliError("--error-budget needs --calibration FILE.npz")
    if opts.error_budget is not None and not opts.error_budget >= 0:
        raise CliError(f"--error-budget {opts.error_budget}: expected a number >= 0")
    if opts.observer != "minmax" and opts.mode not in ("static", "auto"):
        raise CliError(f"--observer applies to --mode static or auto (mode is {opts.mode})")
    if opts.per_token and opts.mode not in ("dynamic", "auto"):
        raise CliError(f"--per-token applies to --mode dynamic or auto (mode is {opts.mode})")
    for flag, value, default in (("--act-bits", opts.act_bits, 0),
                                 ("--rounding", opts.rounding, "nearest")):
        if value != default and opts.mode != "weight-only":
            raise CliError(f"{flag} applies to --mode weight-only (mode is {opts.mode})")
    if opts.rounding == "gptq" and not opts.calibration:
        raise CliError("--rounding gptq needs --calibration FILE.npz (the inputs each layer's "
                       "output error is minimized on)")
    if opts.calibration and not os.path.isfile(opts.calibration):
        raise CliError(f"calibration file not found: {opts.calibration}")
    pipeline = None if opts.pipeline == "none" else check_pipeline(opts.pipeline)
    loaded, graph = load_optimized(opts, pipeline)
    calibration = None
    if opts.calibration:
        from graphopt.quant.calibration import load_calibration

        calibration = load_calibration(opts.calibration, graph)
    options = {"percentile": opts.percentile} if opts.observer == "percentile" else {}
    quantized, report = graphopt.quantize(
        graph, opts.mode, calibration=calibration, error_budget=opts.error_budget,
        exclude=tuple(opts.exclude), sensitivity=opts.sensitivity, observer=opts.observer,
        observer_options=options, per_token=opts.per_token, bits=opts.bits,
        block_size=opts.block_size, act_bits=opts.act_bits, rounding=opts.rounding,
        speed=opts.speed_aware, report=True, target=target, modes=modes)
    if not opts.quiet:
        print(report)
    speed_check(opts, graph, quantized, loaded.args, backend, target.threads)
    write_output(quantized, opts.output, backend, f"{report.mode}, "
                 f"{len(report.quantized)}/{len(report.layers)} layers {report.label}",
                 threads=target.threads, int8_weights=opts.int8_weights)
    return 0


def _add_output_arguments(p) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="where to save it (.onnx, .graphopt)")
    p.add_argument("--backend", choices=("onnx", "native", "torch"), default=None,
                   help="what to save, and the backend the quantization is planned for "
                   "(default: from OUT's extension: .onnx -> onnx, .graphopt -> torch)")
    p.add_argument("--int8-weights", choices=("s8", "u8"), default="s8",
                   help="onnx: int8 weights as s8 (default; onnxruntime's fast U8S8 kernels, "
                   "exact on CPUs with VNNI) or u8 with zero point 128 (U8U8 kernels, exact on "
                   "every CPU: use it for AVX2-only deployments)")


def _auto_modes(opts) -> tuple[str, ...]:
    """``--modes`` as a tuple (empty: the default), checked."""
    if opts.modes is None:
        return ()
    if opts.mode != "auto":
        raise CliError(f"--modes applies to --mode auto (mode is {opts.mode})")
    modes = tuple(m.strip() for m in opts.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in _AUTO_MODES]
    if unknown or not modes:
        raise CliError(f"--modes {opts.modes!r}: expected a comma-separated list of "
                       f"{', '.join(_AUTO_MODES)}")
    return modes
