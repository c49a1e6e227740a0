"""Run a graphopt fuzz harness: coverage-guided with atheris when it is installed, else a
deterministic mutation loop.

Every harness is ``fuzz/fuzz_<target>.py`` with ``test_one_input(data: bytes)`` (lets only
``GraphoptError`` escape), ``SEED_DIR`` and ``seeds()``. A finding is any other exception, a
crash of the process (atheris/libFuzzer), or an input slower than ``--hang-s``.

Examples::

    python fuzz/run.py parser --runs 1000000            # atheris, until 1M executions
    python fuzz/run.py onnx --time 600 --seed 3         # atheris, for ten minutes
    python fuzz/run.py artifact --runs 2000 --no-atheris  # plain mutation loop (CI smoke)
    python fuzz/run.py all --time 60                    # each harness in turn (make fuzz)

Seeds live in ``fuzz/corpus/<target>/`` (kept in the repo; ``--write-seeds`` regenerates them
from the harness's ``seeds()``); inputs that atheris finds go to ``build/fuzz/<target>/``, and
findings are written to ``build/fuzz/findings/<target>/`` with the traceback beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import sys
import time
import traceback

FUZZ_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ_DIR)
TARGETS = ("parser", "onnx", "artifact", "bundle", "gcm", "modeldir", "decoderdir")


def load_harness(target: str, instrument: bool = False):
    """Import ``fuzz_<target>``; with ``instrument``, graphopt is compiled with atheris' coverage
    hooks (only graphopt: instrumenting torch or numpy would make every run far slower)."""
    if FUZZ_DIR not in sys.path:
        sys.path.insert(0, FUZZ_DIR)
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["graphopt"]):
            return importlib.import_module(f"fuzz_{target}")
    return importlib.import_module(f"fuzz_{target}")


def seed_inputs(harness, target: str, write: bool = False) -> list[bytes]:
    """The committed seed corpus, or the harness's ``seeds()`` when there is none (or asked)."""
    folder = os.path.join(ROOT, harness.SEED_DIR)
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if write or not files:
        produced = list(harness.seeds())
        os.makedirs(folder, exist_ok=True)
        for data in produced:
            name = hashlib.sha1(data).hexdigest()[:16]
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        return produced
    out = []
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            out.append(f.read())
    return out


# ------------------------------------------------------------------------------- mutation loop
_INTERESTING = [b"0", b"-1", b"-2147483649", b"9223372036854775808", b"1e308", b"nan", b"-inf",
                b"[", b"]", b"(", b")", b"{", b"}", b",", b"%", b"\x00", b"\xff", b"//", b"**",
                b"s0", b"sym(", b"\"", b"\\", b"\n"]


class Mutator:
    """libFuzzer-style byte mutations (flip, erase, insert, duplicate, splice, interesting
    tokens, integer edits), deterministic for a seed so a CI finding reproduces exactly."""

    def __init__(self, corpus: list[bytes], seed: int, structured=None):
        self.corpus = [c for c in corpus if c] or [b""]
        self.rng = random.Random(seed)
        self.structured = structured  # a harness's own mutate(data, rng), e.g. protobuf fields

    def next(self) -> bytes:
        if self.structured is not None and self.rng.random() < 0.75:
            return self.structured(self.rng.choice(self.corpus), self.rng)
        data = bytearray(self.rng.choice(self.corpus))
        for _ in range(1 + int(self.rng.expovariate(1.0))):
            data = self._mutate(data)
        return bytes(data)

    def _mutate(self, data: bytearray) -> bytearray:
        rng, n = self.rng, len(data)
        kind = rng.randrange(7)
        if n == 0 or kind == 0:  # insert an interesting token
            pos = rng.randint(0, n)
            return data[:pos] + bytearray(rng.choice(_INTERESTING)) + data[pos:]
        pos = rng.randrange(n)
        if kind == 1:  # flip a bit
            data[pos] ^= 1 << rng.randrange(8)
        elif kind == 2:  # random byte
            data[pos] = rng.randrange(256)
        elif kind == 3:  # erase a run
            del data[pos:pos + rng.randint(1, min(64, n - pos))]
        elif kind == 4:  # duplicate a run
            end = min(n, pos + rng.randint(1, 64))
            data[pos:pos] = data[pos:end]
        elif kind == 5:  # splice with another corpus entry
            other = rng.choice(self.corpus)
            if other:
                start = rng.randrange(len(other))
                data[pos:] = other[start:start + rng.randint(1, 256)] + data[pos:]
        else:  # edit the digits of a number in place
            digits = bytes(str(rng.choice([0, 1, -1, 2**31, 2**63, 7, 65535])), "ascii")
            data[pos:pos + 1] = digits
        return data


def run_loop(harness, target: str, corpus: list[bytes], runs: int | None, seconds: float | None,
             seed: int, hang_s: float, progress: bool = True) -> dict:
    """Run mutated inputs through the harness; returns counts and the findings."""
    mutator = Mutator(corpus, seed, getattr(harness, "mutate", None))
    findings, slow, executed = [], [], 0
    start = time.perf_counter()
    inputs = iter(corpus)
    while True:
        if runs is not None and executed >= runs:
            break
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
        data = next(inputs, None)
        if data is None:
            data = mutator.next()
        t0 = time.perf_counter()
        try:
            harness.test_one_input(data)
        except Exception as exc:  # noqa: BLE001 - every escape is a finding
            findings.append(_save_finding(target, data, exc))
        elapsed = time.perf_counter() - t0
        if elapsed > hang_s:
            slow.append((elapsed, _save_finding(target, data, None, elapsed)))
        executed += 1
        if progress and executed % 5000 == 0:
            rate = executed / (time.perf_counter() - start)
            print(f"fuzz {target}: {executed} runs, {rate:.0f}/s, {len(findings)} findings, "
                  f"{len(slow)} slow", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    return {"target": target, "engine": "mutation-loop", "seed": seed, "executions": executed,
            "seconds": round(wall, 1), "exec_per_s": round(executed / max(wall, 1e-9)),
            "findings": len(findings), "slow": len(slow),
            "finding_files": findings[:20], "slow_files": [f for _, f in slow[:20]]}


def _save_finding(target: str, data: bytes, exc: BaseException | None,
                  elapsed: float | None = None) -> str:
    folder = os.path.join(ROOT, "build", "fuzz", "findings", target)
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    path = os.path.join(folder, ("slow-" if exc is None else "crash-") + name)
    with open(path, "wb") as f:
        f.write(data)
    with open(path + ".txt", "w") as f:
        if exc is None:
            f.write(f"slow input: {elapsed:.2f} s\n")
        else:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return os.path.relpath(path, ROOT)


# ------------------------------------------------------------------------------------ atheris
def run_atheris(target: str, runs: int | None, seconds: float | None, seed: int,
                hang_s: float, max_len: int) -> None:
    """Hand over to libFuzzer (does not return: libFuzzer exits with its status)."""
    import atheris

    harness = load_harness(target, instrument=True)
    corpus_dir = os.path.join(ROOT, harness.SEED_DIR)
    seed_inputs(harness, target)  # make sure the seed folder exists and is filled
    out_dir = os.path.join(ROOT, "build", "fuzz", target)
    findings = os.path.join(ROOT, "build", "fuzz", "findings", target)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(findings, exist_ok=True)
    argv = [sys.argv[0], out_dir, corpus_dir, f"-seed={seed}", f"-timeout={int(max(1, hang_s))}",
            f"-max_len={max_len}", f"-artifact_prefix={findings}/", "-print_final_stats=1",
            "-rss_limit_mb=4096"]
    if runs is not None:
        argv.append(f"-runs={runs}")
    if seconds is not None:
        argv.append(f"-max_total_time={int(seconds)}")
    structured = getattr(harness, "mutate", None)
    if structured is not None:  # structure-aware mutations (a protobuf that still decodes)
        def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
            rng = random.Random(seed)
            if rng.random() < 0.25:
                return atheris.Mutate(data, max_size)
            return structured(data, rng)[:max_size]

        atheris.Setup(argv, harness.test_one_input, custom_mutator=custom_mutator)
    else:
        atheris.Setup(argv, harness.test_one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=(*TARGETS, "all"))
    parser.add_argument("--runs", type=int, help="executions per harness")
    parser.add_argument("--time", type=float, help="seconds per harness")
    parser.add_argument("--seed", type=int, default=1, help="> 0 (libFuzzer reads 0 as random)")
    parser.add_argument("--hang-s", type=float, default=10.0,
                        help="an input slower than this is a finding")
    parser.add_argument("--max-len", type=int, default=1 << 18, help="atheris: longest input")
    parser.add_argument("--no-atheris", action="store_true", help="plain mutation loop")
    parser.add_argument("--write-seeds", action="store_true",
                        help="regenerate fuzz/corpus/<target>/ from the harness and exit")
    parser.add_argument("--json", help="mutation loop: write the summary here")
    opts = parser.parse_args(argv)
    if opts.runs is None and opts.time is None and not opts.write_seeds:
        parser.error("give --runs and/or --time")
    targets = TARGETS if opts.target == "all" else (opts.target,)
    if opts.write_seeds:
        for target in targets:
            count = len(seed_inputs(load_harness(target), target, write=True))
            print(f"{target}: {count} seeds written")
        return 0
    try:
        import atheris  # noqa: F401
        have_atheris = not opts.no_atheris
    except ImportError:
        have_atheris = False
    if have_atheris:
        if len(targets) > 1:  # libFuzzer exits the process: one child per harness
            import subprocess

            status = 0
            for target in targets:
                cmd = [sys.executable, os.path.abspath(__file__), target, "--seed", str(opts.seed),
                       "--hang-s", str(opts.hang_s), "--max-len", str(opts.max_len)]
                cmd += ["--runs", str(opts.runs)] if opts.runs is not None else []
                cmd += ["--time", str(opts.time)] if opts.time is not None else []
                status |= subprocess.call(cmd)
            return status
        run_atheris(targets[0], opts.runs, opts.time, opts.seed, opts.hang_s, opts.max_len)
        return 0
    summaries = []
    for target in targets:
        harness = load_harness(target)
        summary = run_loop(harness, target, seed_inputs(harness, target), opts.runs, opts.time,
                           opts.seed, opts.hang_s)
        print(json.dumps(summary))
        summaries.append(summary)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(summaries, f, indent=1)
    return 1 if any(s["findings"] or s["slow"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
