"""``graphopt tune`` with 1 and 2 workers on PostgreSQL (issue #18): trials per hour.

A throwaway PostgreSQL server (tests/postgres_server.py; or ``--storage URL``) holds one study
per run; ``graphopt tune zoo:mlp ... --workers N --trials T --threads 1`` runs T trials with N
processes (1 thread each, so 2 workers use both cores of a 2-core machine). The wall time of
each run gives trials per hour; the scaling is measured, not assumed.

Usage: python benchmarks/bench_tune_workers.py [--trials 24] [--storage URL] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SPACE = {"prune": ["none"], "quantize": ["none", "dynamic", "static", "auto"],
         "backend": ["native", "onnxruntime"]}


def run(storage: str, workers: int, trials: int, work: str) -> dict:
    study = f"workers{workers}-{int(time.time())}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "graphopt.cli", "tune", "zoo:mlp?width=256&depth=3",
                    "--calibration", os.path.join(work, "c.npz"), "--space",
                    os.path.join(work, "space.json"), "--trials", str(trials), "--workers",
                    str(workers), "--threads", "1", "--storage", storage, "--study", study,
                    "-o", os.path.join(work, study), "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    with open(os.path.join(work, study, "front.json")) as f:
        report = json.load(f)
    done = len(report["trials"])
    return {"workers": workers, "trials": done, "seconds": round(seconds, 1),
            "trials_per_hour": done / seconds * 3600,
            "distinct_workers": len({t["worker"] for t in report["trials"]})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--storage", default=None)
    p.add_argument("--out", default=os.path.join(HERE, "results", "tune_workers.json"))
    opts = p.parse_args(argv)
    from graphopt.bench.machine import machine_info
    from graphopt.bench.report import write_results

    work = tempfile.mkdtemp(prefix="graphopt_tune_workers_")
    np.savez(os.path.join(work, "c.npz"),
             np.random.default_rng(0).standard_normal((2, 1, 256)).astype(np.float32))
    with open(os.path.join(work, "space.json"), "w") as f:
        json.dump(SPACE, f)
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from postgres_server import postgres_server

    with (postgres_server() if opts.storage is None else _given(opts.storage)) as storage:
        runs = [run(storage, n, opts.trials, work) for n in (1, 2)]
    for r in runs:
        print(f"{r['workers']} worker(s): {r['trials']} trials in {r['seconds']} s = "
              f"{r['trials_per_hour']:.0f} trials/hour ({r['distinct_workers']} processes "
              "ran trials)")
    out = {"schema": "graphopt-tune-workers/1", "machine": machine_info(),
           "settings": {"trials": opts.trials, "threads_per_worker": 1, "space": SPACE,
                        "model": "zoo:mlp?width=256&depth=3", "storage": "postgresql"},
           "runs": runs, "scaling": runs[1]["trials_per_hour"] / runs[0]["trials_per_hour"]}
    print(f"scaling 1 -> 2 workers: {out['scaling']:.2f}x")
    write_results(opts.out, out)
    return 0


class _given:
    def __init__(self, url: str):
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
