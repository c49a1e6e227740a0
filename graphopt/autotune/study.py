"""``graphopt.tune``: search pipelines against an accuracy goal, on Optuna.

Each trial samples a pipeline from the search space (graphopt/autotune/space.py), builds its graph,
scores it with the user's ``metric`` (default: the mean cosine of its outputs to the float
graph's on the data) and times it against the float graph on the native runtime in one
interleaved run (so its speed-up is measured in the same conditions as its reference, whatever
the machine's drift). Two objectives, speed-up and metric, both maximized; a hard constraint
``metric >= baseline - max_accuracy_drop`` (Optuna's constrained multi-objective sampling
steers away from infeasible regions: ``Trial.set_constraint``). The chosen point is the fastest feasible one; it is
re-applied from its parameters and, with ``output``, saved as a model directory whose manifest
carries the lineage (graph and data hashes, parameters, measured figures).

Storage is Optuna's: in memory by default, ``sqlite:///study.db`` to keep a study (nothing to
start), a PostgreSQL URL for many machines. A study stored that way resumes: ``tune`` with the
same ``storage`` and ``study`` continues it (``load_if_exists``). A trial that fails is recorded
(state FAIL, its error in the ``error`` user attribute) and the search goes on. Every trial
records the machine it was timed on; trials from another machine are left out of the front
(their speed-ups are not comparable), with a note.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.autotune.space import apply_params, checked_space, suggest

REFERENCE_BACKEND = "native"  # every trial's speed-up is against the float graph here


@dataclass
class TuneResult:
    """What a search found: the front, the chosen point and its graph."""

    baseline_metric: float
    trials: list[dict]  # every completed trial of this machine: params and figures
    front: list[dict]  # the Pareto-optimal ones (speed-up, metric)
    chosen: dict | None  # the fastest feasible trial
    graph: Graph | None  # the chosen point, re-applied
    failed: list[dict] = field(default_factory=list)  # number, params, error
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"tune: {len(self.trials)} trials ({len(self.failed)} failed), "
                 f"{len(self.front)} on the front, baseline metric {self.baseline_metric:.4f}"]
        for t in sorted(self.front, key=lambda t: -t["speedup"]):
            mark = "*" if self.chosen and t["number"] == self.chosen["number"] else " "
            lines.append(f" {mark} #{t['number']:<3} {t['speedup']:5.2f}x  metric "
                         f"{t['metric']:.4f}  {t['bytes'] / 1e6:.2f} MB  "
                         f"{_describe(t['params'])}" + ("" if t["feasible"] else "  (infeasible)"))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def tune(graph: Graph, data: list[tuple], *, metric: Callable[[Graph], float] | None = None,
         max_accuracy_drop: float | None = None, trials: int = 20,
         timeout: float | None = None, storage: str | None = None, study: str = "graphopt",
         space: dict | None = None, seed: int = 0, threads: int | None = None,
         recover: Callable[[Graph], Graph] | None = None, output: str | None = None,
         progress: bool = False, total_trials: int | None = None, heartbeat_s: int = 10,
         grace_s: int = 60) -> TuneResult:
    """Search pipelines for ``graph`` (see the module doc). ``data``: argument tuples, the
    calibration data and (without ``metric``) what outputs are compared on; the first one is
    what trials are timed on. ``recover``: the user's fine-tuning of a pruned graph.
    ``trials``: how many to run here; ``total_trials``: instead, run until the study holds
    that many completed trials (what several workers sharing a study agree on).
    ``heartbeat_s`` / ``grace_s``: with a storage URL, each running trial beats every
    ``heartbeat_s``; one silent for ``grace_s`` (its worker died) is failed and run again
    with the same parameters by the next worker that starts a trial."""
    import optuna

    if not isinstance(graph, Graph):
        raise GraphoptError(f"graphopt.tune takes a Graph, got {type(graph).__name__}")
    data = [tuple(d) if isinstance(d, (tuple, list)) else (d,) for d in data]
    if not data:
        raise GraphoptError("graphopt.tune needs data: a list of argument tuples")
    from graphopt.quant.api import prepared

    base = prepared(graph)
    space = checked_space(space)
    score = metric or _cosine_metric(base, data)
    baseline = float(score(base))
    machine = _machine(threads)
    runner = _TrialRunner(base, data, score, baseline, max_accuracy_drop, space, threads,
                          recover, machine)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if not progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        st = optuna.create_study(study_name=study,
                                 storage=_storage(storage, heartbeat_s, grace_s),
                                 load_if_exists=True, directions=["maximize", "maximize"],
                                 sampler=sampler)
    except Exception as exc:  # a bad URL, an unreachable server, a missing driver
        raise GraphoptError(f"cannot open the study storage {storage!r}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300]} (expected sqlite:///FILE.db or "
                            "postgresql://user@host/db with psycopg2 installed)") from None
    identity = graph_hash(base)
    if st.user_attrs.get("graph_sha256", identity) != identity:
        raise GraphoptError(f"study {study!r} in {storage} holds trials of another model "
                            "(its graph hash differs): use another --study name")
    st.set_user_attr("graph_sha256", identity)
    if not st.trials:  # the float graph itself (where the space has it): the point to beat
        float_point = {k: v for k, v in (("prune", "none"), ("quantize", "none"),
                                         ("backend", REFERENCE_BACKEND)) if v in space[k]}
        st.enqueue_trial(float_point, skip_if_exists=True)
    callbacks = [] if total_trials is None else [optuna.study.MaxTrialsCallback(total_trials)]
    if total_trials is None or _completed(st) < total_trials:
        st.optimize(runner, n_trials=trials if total_trials is None else None, timeout=timeout,
                    catch=(Exception,), show_progress_bar=progress, callbacks=callbacks)
    result = _result(st, baseline, machine, max_accuracy_drop)
    if result.chosen is not None:
        result.graph = apply_params(base, result.chosen["params"], data, recover)
    if output is not None:
        write_outputs(result, output, base, data)
    return result


def _storage(url: str | None, heartbeat_s: int, grace_s: int):
    """Optuna's storage for ``url`` (None: in memory), with heartbeats and one retry of a
    trial whose worker died."""
    if url is None:
        return None
    import warnings

    import optuna

    with warnings.catch_warnings():  # (heartbeats are "experimental" in Optuna 5: used as is)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=heartbeat_s, grace_period=grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1))


def _completed(st) -> int:
    import optuna

    return len(st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


class _TrialRunner:
    """The objective: one trial's graph, metric and speed-up."""

    def __init__(self, base, data, score, baseline, max_drop, space, threads, recover,
                 machine):
        self.base, self.data, self.score, self.baseline = base, data, score, baseline
        self.max_drop, self.space, self.threads = max_drop, space, threads
        self.recover, self.machine, self.cache = recover, machine, {}
        self.reference = None

    def __call__(self, trial) -> tuple[float, float]:
        params = suggest(trial, self.space)
        trial.set_user_attr("machine", self.machine)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("params", params)
        try:
            graph = apply_params(self.base, params, self.data, self.recover, self.cache)
            value = float(self.score(graph))
            if self.reference is None:  # compiled once: every trial is timed against it
                from graphopt.compile import compile as compile_graph

                self.reference = compile_graph(self.base, backend=REFERENCE_BACKEND,
                                               threads=self.threads)
            speedup, ms = measure_speedup(self.reference, graph, self.data[0],
                                          params["backend"], self.threads)
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc)[:500]}")
            raise
        drop = self.baseline - value
        # feasible when <= 0: the samplers steer away from the rest
        trial.set_constraint("accuracy_drop", drop - self.max_drop
                             if self.max_drop is not None else -1.0)
        trial.set_user_attr("figures", {"metric": value, "speedup": speedup, "latency_ms": ms,
                                        "bytes": graph.constant_bytes()})
        return speedup, value


def measure_speedup(ref, graph: Graph, args: tuple, backend: str, threads: int | None,
                    rounds: int = 12) -> tuple[float, float]:
    """(median per-round speed-up of ``graph`` on ``backend`` over ``ref`` (the float graph
    compiled natively), the trial's median ms per call), timed interleaved in blocks with
    pauses."""
    from graphopt.compile import compile as compile_graph
    from graphopt.timing import calibrate, run_interleaved

    trial = compile_graph(graph, backend=backend, threads=threads)
    calls = {"reference": lambda: ref(*args), "trial": lambda: trial(*args)}
    per_sample = {k: calibrate(c, 3, 0.005, time.perf_counter) for k, c in calls.items()}
    samples, _ = run_interleaved(calls, per_sample, rounds, time.perf_counter, rotate=True,
                                 block=4, pause_s=0.02, block_warmup=1)
    ratios = [a / b for a, b in zip(samples["reference"], samples["trial"])]
    return statistics.median(ratios), statistics.median(samples["trial"]) * 1e3


def _cosine_metric(base: Graph, data: list[tuple]) -> Callable[[Graph], float]:
    """Mean cosine of a graph's float outputs to ``base``'s over ``data`` (1.0 for ``base``)."""
    from graphopt.quant.fallback import output_error, reference_outputs

    refs = reference_outputs(base, data)
    return lambda g: 1.0 - output_error(g, refs, data)


def _result(st, baseline: float, machine: str, max_drop: float | None) -> TuneResult:
    import optuna

    done, failed, other = [], [], 0
    for t in st.trials:
        if t.state == optuna.trial.TrialState.FAIL:
            failed.append({"number": t.number, "params": t.user_attrs.get("params"),
                           "error": t.user_attrs.get(
                               "error", "no result: its worker stopped beating (died); "
                               "retried with the same parameters")})
        elif t.state == optuna.trial.TrialState.COMPLETE and "figures" in t.user_attrs:
            if t.user_attrs.get("machine") != machine:
                other += 1
                continue
            f = t.user_attrs["figures"]
            feasible = max_drop is None or baseline - f["metric"] <= max_drop
            done.append({"number": t.number, "params": t.user_attrs["params"], **f,
                         "feasible": feasible, "worker": t.user_attrs.get("worker")})
    front = [t for t in done if not any(_dominates(o, t) for o in done)]
    feasible = [t for t in done if t["feasible"]]
    chosen = max(feasible, key=lambda t: (t["speedup"], t["metric"])) if feasible else None
    notes = [f"{other} trials timed on another machine left out (their speed-ups are not "
             "comparable with this one's)"] if other else []
    if not feasible and done:
        notes.append(f"no trial kept the metric within {max_drop} of {baseline:.4f}")
    return TuneResult(baseline, done, front, chosen, None, failed, notes)


def _dominates(a: dict, b: dict) -> bool:
    return (a["speedup"] >= b["speedup"] and a["metric"] >= b["metric"]
            and (a["speedup"] > b["speedup"] or a["metric"] > b["metric"]))


def _machine(threads: int | None) -> str:
    import torch

    from graphopt.costcache import machine_key

    return machine_key(threads=threads or torch.get_num_threads())


def graph_hash(graph: Graph) -> str:
    """sha256 of a graph's IR text and constant bytes (its identity in a lineage)."""
    digest = hashlib.sha256(str(graph).encode())
    for name in sorted(graph.constants):
        digest.update(name.encode())
        digest.update(graph.constants[name].data.tobytes())
    return digest.hexdigest()


def data_hash(data: list[tuple]) -> str:
    digest = hashlib.sha256()
    for item in data:
        for t in item:
            digest.update(t.detach().cpu().numpy().tobytes() if hasattr(t, "detach")
                          else repr(t).encode())
    return digest.hexdigest()


def write_outputs(result: TuneResult, output: str, base: Graph, data: list[tuple]) -> None:
    """``output/front.json`` (every trial, the front, the choice), ``output/pareto.png`` and
    the chosen model as the model directory ``output/model`` with its lineage."""
    from graphopt.artifact import save_model_dir
    from graphopt.fileio import atomic_write

    os.makedirs(output, exist_ok=True)
    lineage = {"graph_sha256": graph_hash(base), "data_sha256": data_hash(data),
               "baseline_metric": result.baseline_metric}
    report = {"format": "graphopt-tune/1", **lineage, "trials": result.trials,
              "front": [t["number"] for t in result.front], "chosen": result.chosen,
              "failed": result.failed, "notes": result.notes}
    with atomic_write(os.path.join(output, "front.json"), "w") as f:
        json.dump(report, f, indent=1)
    _plot(result, os.path.join(output, "pareto.png"))
    if result.graph is not None:
        figures = {**lineage, "params": result.chosen["params"],
                   **{k: result.chosen[k] for k in ("metric", "speedup", "latency_ms")}}
        save_model_dir(result.graph, os.path.join(output, "model"), figures=figures,
                       pipeline=_describe(result.chosen["params"]))


def _plot(result: TuneResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    others = [t for t in result.trials if t not in result.front]
    ax.scatter([t["speedup"] for t in others], [t["metric"] for t in others], c="#bbbbbb",
               label="trials")
    front = sorted(result.front, key=lambda t: t["speedup"])
    ax.plot([t["speedup"] for t in front], [t["metric"] for t in front], "o-", c="#1f77b4",
            label="Pareto front")
    if result.chosen is not None:
        ax.scatter([result.chosen["speedup"]], [result.chosen["metric"]], s=120,
                   facecolors="none", edgecolors="#d62728", label="chosen")
    ax.axhline(result.baseline_metric, ls=":", c="k", lw=1, label="float")
    ax.set_xlabel("speed-up vs float graph (native)")
    ax.set_ylabel("metric")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _describe(params: dict) -> str:
    parts = []
    if params.get("prune", "none") != "none":
        amount = params.get("prune_flops", params.get("sparsity"))
        parts.append(f"prune {params['prune']} {amount:.2f}")
    if params.get("quantize", "none") != "none":
        q = params["quantize"] + (" per-token" if params.get("per_token") else "")
        if params.get("error_budget") is not None:
            q += f" budget {params['error_budget']:.1e}"
        parts.append(q)
    return ", ".join(parts or ["float"]) + f" on {params.get('backend')}"
