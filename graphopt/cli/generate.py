"""``graphopt generate DIR --input-ids 1,2,3``: generate tokens with a saved decoder directory."""

from __future__ import annotations

import argparse
import json
import os
import re
import time

from graphopt.cli._common import CliError, info, paragraph

DEFAULT_NEW_TOKENS = 32
MAX_PROMPT_FILE = 16 << 20  # bytes: far above any batch a cache holds, and read in one piece
_TOKEN = re.compile(r"[0-9]{1,12}")  # ASCII digits only: int() would take "٣" and "1_0"
_SEPARATORS = re.compile(r"[,\s]+")
_SAMPLING_FLAGS = (("temperature", "--temperature"), ("top_k", "--top-k"),
                   ("top_p", "--top-p"), ("seed", "--seed"))


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "generate", parents=[common], help="generate tokens with a decoder directory",
        description=paragraph(
            "Load DIR, a decoder directory (`graphopt trace-decoder`, or graphopt.save of a "
            "traced decoder; manifest, hashes and decoder metadata checked), compile its step "
            "graph for --backend and generate up to --max-new-tokens token ids after each "
            "prompt. Prompts are token ids (graphopt does not tokenize text): --input-ids, "
            "repeated for a batch, or --prompt-file (.json: a list of ids or a list of lists; "
            ".txt: one prompt per line, ids separated by commas or spaces). Prompts of "
            "different lengths are left-padded. Greedy by default; --do-sample draws with "
            "--temperature, --top-k and --top-p (--seed makes it reproducible). Generation of "
            "a sequence stops at a stop token (default: the model's end-of-sequence ids). "
            "Prints each sequence's new ids, comma-separated, one line per prompt; --stream "
            "prints each step's ids as they are chosen; --json prints the tokens with the "
            "prefill time and the decode speed of this run (first-run planning included)."),
        epilog="examples:\n"
        "  graphopt generate gpt2_tiny/ --input-ids 1,2,3 --max-new-tokens 32\n"
        "  graphopt generate gpt2_tiny/ --input-ids 5,6 --input-ids 7,8,9 --stream\n"
        "  graphopt generate llama/ --prompt-file prompts.json --do-sample --top-p 0.9 "
        "--seed 0 --json\n"
        "  graphopt generate llama/ --input-ids 1,2 --backend onnxruntime --threads 2 "
        "--stop-token 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="a decoder directory")
    prompts = p.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--input-ids", action="append", metavar="IDS",
                         help="a prompt: comma-separated token ids (repeat for a batch)")
    prompts.add_argument("--prompt-file", metavar="FILE",
                         help="prompts as .json (list of ids, or list of lists) or .txt (one "
                         "prompt per line)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"tokens to generate per prompt at most (default: {DEFAULT_NEW_TOKENS}, "
                   "or what the cache holds after the longest prompt if that is less)")
    p.add_argument("--backend", choices=("native", "onnxruntime"), default="native",
                   help="backend the step graph runs on (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads (default: the backend's default)")
    _add_sampling_arguments(p)
    output = p.add_mutually_exclusive_group()
    output.add_argument("--stream", action="store_true",
                        help="print each step's token ids as they are chosen (one line per "
                        "step, one id per prompt; '-' for a prompt that has stopped)")
    output.add_argument("--json", action="store_true",
                        help="print one JSON object: the prompts, the new tokens, prefill ms "
                        "and decode tokens/s")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no timing summary on stderr")
    p.set_defaults(run=run)


def _add_sampling_arguments(p) -> None:
    p.add_argument("--do-sample", action="store_true",
                   help="sample the next token (default: greedy, the most likely one)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="--do-sample: divide the logits by T > 0 (default: 1)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="--do-sample: keep the K most likely tokens (default: 0, all)")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="--do-sample: keep the most likely tokens holding P of the mass, "
                   "0 < P <= 1 (default: 1, all)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="--do-sample: seed of the draws (default: torch's global generator)")
    stops = p.add_mutually_exclusive_group()
    stops.add_argument("--stop-token", type=int, action="append", default=None, metavar="ID",
                       help="stop a sequence when it produces ID (repeatable; default: the "
                       "model's end-of-sequence ids)")
    stops.add_argument("--no-stop", action="store_true",
                       help="never stop early: generate exactly --max-new-tokens per prompt")


def run(opts) -> int:
    from graphopt.decoding import load_decoder, stream
    from graphopt.limits import check_threads

    sampling = _sampling(opts)  # every option is checked before the directory is read
    if opts.max_new_tokens is not None and opts.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens {opts.max_new_tokens}: give at least 1")
    if opts.threads is not None:
        check_threads(opts.threads, "--threads")
    prompts = _prompts(opts)
    if not os.path.isdir(opts.directory):
        what = "not a directory" if os.path.exists(opts.directory) else "no such directory"
        raise CliError(f"{opts.directory}: {what} (create a decoder directory with "
                       "`graphopt trace-decoder MODEL -o DIR`)")
    decoder = load_decoder(opts.directory)
    new_tokens, stop = _check_tokens(decoder, prompts, opts)
    pad = decoder.pad_token_id if decoder.pad_token_id is not None else (stop[0] if stop else 0)
    ids, mask = _left_padded(prompts, pad)
    compiled = decoder.compile(backend=opts.backend, threads=opts.threads)
    steps, prefill_s, decode_s = _run_steps(
        stream(compiled, ids, new_tokens, attention_mask=mask, eos_token_id=stop,
               pad_token_id=pad, **sampling), stop, len(prompts), opts.stream)
    report = _report(decoder, opts, sampling, prompts, _new_tokens(steps, stop, len(prompts)),
                     stop, prefill_s, decode_s)
    if opts.json:
        print(json.dumps(report))
    elif not opts.stream:
        for sequence in report["sequences"]:
            print(",".join(str(t) for t in sequence["tokens"]))
    if not opts.quiet:
        rate = report["decode_tokens_per_s"]
        decode_steps = len(steps) - 1
        speed = (f", {decode_steps} decode step{'s' if decode_steps > 1 else ''} at "
                 f"{rate:.1f} tokens/s" if rate else "")
        info(f"{decoder.model_name} on {opts.backend}: prefill {prefill_s * 1e3:.1f} ms "
             f"({len(prompts)} x {ids.shape[1]} tokens){speed}")
    return 0


def _report(decoder, opts, sampling: dict, prompts, new, stop, prefill_s: float,
            decode_s: float) -> dict:
    """What ``--json`` prints. Decode speed: the new tokens of every prompt after the first
    step (the prefill chose the first), per second of decoding."""
    steps = max(len(tokens) for tokens in new)
    decoded = sum(max(len(tokens) - 1, 0) for tokens in new)
    return {
        "model": decoder.model_name, "backend": opts.backend, "threads": opts.threads,
        "max_length": decoder.max_length, "sampling": sampling,
        "sequences": [{"prompt": prompt, "tokens": tokens,
                       "stopped": bool(tokens) and tokens[-1] in stop}
                      for prompt, tokens in zip(prompts, new)],
        "steps": steps, "prefill_ms": round(prefill_s * 1e3, 3),
        "decode_ms": round(decode_s * 1e3, 3),
        "decode_tokens_per_s": round(decoded / decode_s, 2) if decoded and decode_s > 0
        else None}


def _sampling(opts) -> dict:
    """The sampling keywords of ``generate``, checked (GenerationError: exit 2)."""
    from graphopt.decoding.sampling import SamplingConfig

    given = [flag for name, flag in _SAMPLING_FLAGS if getattr(opts, name) is not None]
    if given and not opts.do_sample:
        verb = "apply" if len(given) > 1 else "applies"
        raise CliError(f"{', '.join(given)} {verb} to sampling: add --do-sample (without it the "
                       "most likely token is taken)")
    if opts.seed is not None and not 0 <= opts.seed < 1 << 64:
        raise CliError(f"--seed {opts.seed}: give an int from 0 to 2**64 - 1")
    config = SamplingConfig(do_sample=opts.do_sample,
                            temperature=1.0 if opts.temperature is None else opts.temperature,
                            top_k=opts.top_k or 0,
                            top_p=1.0 if opts.top_p is None else opts.top_p, seed=opts.seed)
    return {"do_sample": config.do_sample, "temperature": config.temperature,
            "top_k": config.top_k, "top_p": config.top_p, "seed": config.seed}


# ------------------------------------------------------------------------------- prompts
def _prompts(opts) -> list[list[int]]:
    from graphopt.decoding.trace import MAX_BATCH

    if opts.input_ids is not None:
        prompts = [_parse_ids(text, f"--input-ids {text!r}") for text in opts.input_ids]
    else:
        prompts = _read_prompt_file(opts.prompt_file)
    if not prompts:
        raise CliError(f"{opts.prompt_file}: holds no prompt")
    if len(prompts) > MAX_BATCH:
        raise CliError(f"{len(prompts)} prompts: at most {MAX_BATCH} run as one batch (split "
                       "them over several runs)")
    return prompts


def _parse_ids(text: str, where: str) -> list[int]:
    """Token ids separated by commas and/or whitespace."""
    parts = [part for part in _SEPARATORS.split(text.strip()) if part]
    if not parts:
        raise CliError(f"{where}: no token ids (expected e.g. 1,2,3)")
    for part in parts:
        if not _TOKEN.fullmatch(part):
            raise CliError(f"{where}: {part[:20]!r} is not a token id (expected ids >= 0 "
                           "separated by commas, e.g. 1,2,3)")
    return [int(part) for part in parts]


def _read_prompt_file(path: str) -> list[list[int]]:
    """A .json (a list of ids, or a list of lists of ids) or .txt (one prompt a line) file."""
    kind = os.path.splitext(path)[1].lower()
    if kind not in (".json", ".txt"):
        raise CliError(f"--prompt-file {path}: name it .json (a list of token ids, or a list "
                       "of lists) or .txt (one prompt per line, ids separated by commas)")
    with open(path, "rb") as f:  # (a missing file: FileNotFoundError, one line, exit 2)
        data = f.read(MAX_PROMPT_FILE + 1)
    if len(data) > MAX_PROMPT_FILE:
        raise CliError(f"--prompt-file {path}: over {MAX_PROMPT_FILE >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"--prompt-file {path}: not UTF-8 text") from None
    if kind == ".txt":
        return [_parse_ids(line, f"--prompt-file {path} line {number}")
                for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    return _json_prompts(text, path)


def _json_prompts(text: str, path: str) -> list[list[int]]:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CliError(f"--prompt-file {path}: not valid JSON ({exc})") from None

    def is_ids(item) -> bool:
        return isinstance(item, list) and bool(item) and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in item)

    if is_ids(value):
        return [value]
    if isinstance(value, list) and value and all(is_ids(item) for item in value):
        return value
    raise CliError(f"--prompt-file {path}: expected a list of token ids (ints >= 0) or a list "
                   "of such lists, each with at least one id")


def _check_tokens(decoder, prompts: list[list[int]], opts) -> tuple[int, list[int]]:
    """Check the prompts and stop tokens against the decoder; returns how many tokens to
    generate and the stop tokens."""
    vocab, longest = decoder.vocab_size, max(len(p) for p in prompts)
    for index, prompt in enumerate(prompts):
        outside = [t for t in prompt if t >= vocab]
        if outside:
            raise CliError(f"prompt {index} holds token id {outside[0]}, outside the model's "
                           f"vocabulary [0, {vocab})")
    room = decoder.max_length - longest
    new_tokens = min(DEFAULT_NEW_TOKENS, room) if opts.max_new_tokens is None \
        else opts.max_new_tokens
    if new_tokens < 1 or new_tokens > room:
        wanted = DEFAULT_NEW_TOKENS if opts.max_new_tokens is None else new_tokens
        problem = ("leaves no room for new tokens in" if opts.max_new_tokens is None else
                   f"plus --max-new-tokens {new_tokens} exceed")
        hint = f"give --max-new-tokens {room} or less, or " if room > 0 else ""
        raise CliError(
            f"a {longest}-token prompt {problem} the decoder's cache of {decoder.max_length} "
            f"tokens: {hint}re-create the directory with `graphopt trace-decoder MODEL -o DIR "
            f"--max-length {longest + wanted}`")
    if opts.no_stop:
        return new_tokens, []
    if opts.stop_token is None:
        return new_tokens, list(decoder.eos_token_ids)
    for token in opts.stop_token:
        if not 0 <= token < vocab:
            raise CliError(f"--stop-token {token}: outside the model's vocabulary [0, {vocab})")
    return new_tokens, list(opts.stop_token)


def _left_padded(prompts: list[list[int]], pad: int):
    """``(ids, attention_mask)``: the prompts left-padded to the longest one."""
    import torch

    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, longest - len(prompt):] = 1
    return ids, mask


# ------------------------------------------------------------------------------- running
def _run_steps(steps_iter, stop: list[int], batch: int, show: bool):
    """Drain the step iterator: ``(steps, prefill seconds, decode seconds)``. Each ``next`` is
    timed alone, so printing a streamed step is not counted; the first one runs the prefill."""
    steps, durations = [], []
    running = [True] * batch
    while True:
        start = time.perf_counter()
        tokens = next(steps_iter, None)
        if tokens is None:
            break
        durations.append(time.perf_counter() - start)
        steps.append(tokens)
        if show:
            row_ids = tokens.tolist()
            print(" ".join(str(t) if running[r] else "-" for r, t in enumerate(row_ids)),
                  flush=True)
            running = [running[r] and t not in stop for r, t in enumerate(row_ids)]
    return steps, durations[0], sum(durations[1:])


def _new_tokens(steps, stop: list[int], batch: int) -> list[list[int]]:
    """Each sequence's new tokens, up to and including its first stop token (after it a
    stopped sequence only repeats the pad token)."""
    out: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for tokens in steps:
        for row, token in enumerate(tokens.tolist()):
            if not done[row]:
                out[row].append(token)
                done[row] = token in stop
    return out
