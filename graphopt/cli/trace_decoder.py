"""``graphopt trace-decoder MODEL -o DIR``: a causal LM traced once into a decoder directory."""

from __future__ import annotations

import argparse
import contextlib
import os
import time

from graphopt.cli._common import CliError, check_pipeline, ensure_parent, human_size, info, \
    paragraph

# Options a built-in model takes (graphopt.zoo.causal_lm): its random weights.
_BUILTIN_OPTIONS = ("seed", "initializer_range")


def _builtins() -> dict[str, tuple[str, str]]:
    """``"gpt2-tiny"`` -> ``("gpt2", "tiny")`` for every built-in causal LM."""
    from graphopt.zoo import CAUSAL_LM_SIZES

    return {f"{arch}-{size}": (arch, size) for arch, size in CAUSAL_LM_SIZES}


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "trace-decoder", parents=[common],
        help="trace a causal language model into a decoder directory (for generate)",
        description=paragraph(
            "Trace MODEL, a decoder-only causal language model, once into a step graph with "
            "an explicit KV cache (docs/generation.md), optimize it (--pipeline), optionally "
            "quantize its weights (--quantize weight-only) and save it as a decoder directory: "
            "a model directory whose manifest also holds the cache geometry, the vocabulary "
            "and the stop and pad tokens. `graphopt generate DIR` runs it; in Python, "
            "graphopt.load(DIR) gives the DecoderGraph. MODEL is a built-in model with random "
            f"weights ({', '.join(_builtins())}; ?seed=N&initializer_range=X set the weights) "
            "or package.module:function / file.py:function returning a transformers causal LM "
            "(for example AutoModelForCausalLM.from_pretrained(...))."),
        epilog="examples:\n"
        "  graphopt trace-decoder gpt2-tiny -o gpt2_tiny/ --max-length 256\n"
        "  graphopt trace-decoder 'llama-tiny?seed=1' -o llama/ --quantize weight-only --bits 4\n"
        "  graphopt trace-decoder mylm.py:make -o mylm/ --max-length 1024\n"
        "  graphopt generate gpt2_tiny/ --input-ids 1,2,3 --max-new-tokens 32",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a built-in (gpt2-tiny, ...) or a factory")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="the decoder directory to write (new, empty, or a model directory, "
                   "which is replaced)")
    p.add_argument("--max-length", type=int, default=256, metavar="N",
                   help="cache capacity: prompt plus new tokens (default: %(default)s)")
    p.add_argument("--pipeline", default="default", metavar="P",
                   help="pipeline run on the step graph (default: %(default)s; 'none' skips)")
    p.add_argument("--quantize", choices=("weight-only",), default=None,
                   help="quantize the weights block-wise (decoding a token reads every weight: "
                   "smaller weights decode faster)")
    p.add_argument("--bits", type=int, choices=(4, 8), default=None,
                   help="--quantize weight-only: bits per weight (default: 4)")
    p.add_argument("--act-bits", type=int, choices=(0, 8), default=None,
                   help="--quantize weight-only: 8 also quantizes activations per block "
                   "(integer products); 0 keeps them float (default)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    p.set_defaults(run=run)


def run(opts) -> int:
    import graphopt

    _check_output(opts.output)  # before the (slow) trace
    if opts.max_length < 2:
        raise CliError(f"--max-length {opts.max_length}: give at least 2 (prompt plus new "
                       "tokens)")
    if opts.quantize is None and (opts.bits is not None or opts.act_bits is not None):
        raise CliError("--bits and --act-bits apply to --quantize weight-only")
    pipeline = None if opts.pipeline == "none" else check_pipeline(opts.pipeline)
    model = causal_lm_of(opts.model)
    start = time.perf_counter()
    with _quiet_transformers(not getattr(opts, "debug", False)):
        decoder = graphopt.trace_decoder(model, max_length=opts.max_length)
    if not opts.quiet:
        info(f"traced {decoder.model_name}: {len(decoder.graph.nodes)} nodes "
             f"({time.perf_counter() - start:.1f} s)")
    if pipeline:
        decoder = decoder.with_graph(graphopt.optimize(decoder.graph, pipeline))
    if opts.quantize:
        decoder = decoder.with_graph(graphopt.quantize(
            decoder.graph, "weight-only", bits=opts.bits or 4, act_bits=opts.act_bits or 0))
    manifest = graphopt.save(decoder, opts.output, pipeline=pipeline)
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"wrote {opts.output} (decoder directory, {human_size(size)}): {decoder.model_name}, "
          f"{decoder.num_layers} layer{'s' if decoder.num_layers != 1 else ''}, vocabulary "
          f"{decoder.vocab_size}, max_length {decoder.max_length}")
    if not opts.quiet:
        info(f"run it with `graphopt generate {opts.output} --input-ids 1,2,3`; in Python, "
             "graphopt.load(DIR) gives the DecoderGraph")
    return 0


def causal_lm_of(spec: str):
    """The causal LM that MODEL names: a built-in (``gpt2-tiny?seed=1``) or a factory
    (``pkg.mod:make``, ``file.py:make``) returning one (or a tuple that starts with one)."""
    import torch

    from graphopt import zoo
    from graphopt.model_loader import call_factory, is_factory, split_spec

    base, options = split_spec(spec)
    builtins = _builtins()
    if base in builtins:
        unknown = sorted(set(options) - set(_BUILTIN_OPTIONS))
        if unknown:
            raise CliError(f"MODEL {spec}: unknown options {unknown}; a built-in takes "
                           f"{', '.join(_BUILTIN_OPTIONS)}")
        seed, std = options.get("seed", 0), options.get("initializer_range", 0.02)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 63 \
                or isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < 10:
            raise CliError(f"MODEL {spec}: seed must be an int >= 0 and initializer_range a "
                           "number in (0, 10)")
        return zoo.causal_lm(*builtins[base], seed=seed, initializer_range=float(std))
    if not is_factory(base):
        raise CliError(f"MODEL {spec!r}: expected a built-in causal LM ({', '.join(builtins)}) "
                       "or package.module:function / file.py:function returning one")
    result = call_factory(base, options)
    model = result[0] if isinstance(result, (tuple, list)) and result else result
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"factory {base} returned {type(model).__name__}; expected a causal "
                       "language model (a torch.nn.Module such as transformers' "
                       "AutoModelForCausalLM)")
    return model


@contextlib.contextmanager
def _quiet_transformers(quiet: bool):
    """transformers logs deprecation notices while tracing (log lines, not the Python warnings
    the CLI already hides without --debug): keep stderr to graphopt's own lines meanwhile."""
    try:
        from transformers.utils import logging
    except ImportError:  # a factory's model from elsewhere: nothing to quiet
        quiet = False
    if not quiet:
        yield
        return
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _check_output(path: str) -> None:
    """``-o DIR`` can be written: its folder exists, no symlink, and it is new, empty or a
    model directory (what graphopt.save replaces)."""
    from graphopt.artifact import is_model_dir

    folder = path.rstrip("/" + os.sep) or path
    ensure_parent(folder)
    if os.path.exists(folder) and (not os.path.isdir(folder) or (
            os.listdir(folder) and not is_model_dir(folder))):
        raise CliError(f"-o {path}: exists and is not an empty folder or a model directory "
                       "(graphopt does not write a model into other files): choose a new name")
