"""The search space of ``graphopt.tune``: which pipelines a trial may choose, and how a choice
becomes a graph.

A space is a plain dict (so it can live in a TOML or JSON file); each key is one decision:

    {"prune": ["none", "channels"],          # a list: a categorical choice
     "prune_flops": [0.2, 0.6],              # two numbers: a float range (uniform)
     "quantize": ["none", "dynamic", "static", "auto"],
     "per_token": [False, True],
     "error_budget": [1e-4, 1e-2, "log"],    # a float range sampled on a log scale
     "backend": ["native", "onnxruntime"]}

Missing keys take ``DEFAULT_SPACE``'s; a key a trial does not need (``prune_flops`` without
pruning, ``per_token`` without dynamic int8) is not sampled, so Optuna's samplers see only
decisions that matter. ``apply_params`` is deterministic: the same parameters give the same
graph (pruning ranks by weight magnitude, calibration runs in order), which is what lets
``graphopt.tune`` re-apply the chosen point instead of keeping every trial's graph.
"""

from __future__ import annotations

from typing import Any, Callable

from graphopt.errors import GraphoptError

DEFAULT_SPACE: dict[str, list] = {
    "prune": ["none", "channels"],
    "prune_flops": [0.2, 0.6],
    "quantize": ["none", "dynamic", "static", "auto", "weight-only"],
    "per_token": [False, True],
    "error_budget": [1e-4, 1e-2, "log"],
    "backend": ["native", "onnxruntime"],
}
KNOWN = {"prune": ("none", "channels", "magnitude"), "quantize": (
    "none", "dynamic", "static", "auto", "weight-only", "bf16-compute", "fp16"),
    "backend": ("native", "onnxruntime")}
FLOAT_KEYS = ("prune_flops", "sparsity", "error_budget")


class TuneSpaceError(GraphoptError, ValueError):
    """A search space that cannot be searched (names the key and what it takes)."""


def checked_space(space: dict | None) -> dict[str, list]:
    """``space`` over ``DEFAULT_SPACE``, every entry checked."""
    out = dict(DEFAULT_SPACE)
    if space is not None:
        if not isinstance(space, dict):
            raise TuneSpaceError(f"a search space is a dict, got {type(space).__name__}")
        out.update(space)
    out.setdefault("sparsity", [0.5, 0.9])
    for key, values in out.items():
        if key not in set(DEFAULT_SPACE) | {"sparsity"}:
            raise TuneSpaceError(f"unknown search space key {key!r}; known: "
                                 f"{', '.join(sorted(set(DEFAULT_SPACE) | {'sparsity'}))}")
        if not isinstance(values, list) or not values:
            raise TuneSpaceError(f"space[{key!r}] must be a non-empty list")
        if key in FLOAT_KEYS:
            _check_range(key, values)
        elif key in KNOWN and any(v not in KNOWN[key] for v in values):
            raise TuneSpaceError(f"space[{key!r}] = {values}: choose from {KNOWN[key]}")
    return out


def _check_range(key: str, values: list) -> None:
    numbers = values[:2]
    ok = (len(values) in (2, 3) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for v in numbers)
          and 0 < numbers[0] <= numbers[1] and (len(values) == 2 or values[2] == "log"))
    if key in ("prune_flops", "sparsity") and ok:
        ok = numbers[1] < 1
    if not ok:
        raise TuneSpaceError(f"space[{key!r}] = {values}: expected [low, high] or "
                             "[low, high, \"log\"] with 0 < low <= high"
                             + (" < 1" if key != "error_budget" else ""))


def suggest(trial, space: dict[str, list]) -> dict[str, Any]:
    """One trial's parameters: only the decisions its earlier choices make relevant."""
    params = {"prune": _choice(trial, "prune", space)}
    if params["prune"] == "channels":
        params["prune_flops"] = _float(trial, "prune_flops", space)
    elif params["prune"] == "magnitude":
        params["sparsity"] = _float(trial, "sparsity", space)
    params["quantize"] = _choice(trial, "quantize", space)
    if params["quantize"] == "dynamic":
        params["per_token"] = _choice(trial, "per_token", space)
    if params["quantize"] in ("dynamic", "static", "auto", "weight-only", "bf16-compute"):
        params["error_budget"] = _float(trial, "error_budget", space)
    params["backend"] = _choice(trial, "backend", space)
    return params


def _choice(trial, key: str, space: dict) -> Any:
    values = space[key]
    return values[0] if len(values) == 1 else trial.suggest_categorical(key, values)


def _float(trial, key: str, space: dict) -> float:
    low, high = space[key][:2]
    if low == high:
        return float(low)
    return trial.suggest_float(key, low, high, log=len(space[key]) == 3)


def apply_params(graph, params: dict[str, Any], calibration: list[tuple],
                 recover: Callable | None = None, cache: dict | None = None):
    """The graph ``params`` describe, from the float ``graph``: pruned (then ``recover``, the
    user's fine-tuning, if given), then quantized for the trial's backend. ``cache`` holds
    pruned graphs by their parameters, so trials that share a pruning do not redo it."""
    from graphopt.compile import Target
    from graphopt.prune import prune
    from graphopt.quant.api import quantize

    key = (params["prune"], params.get("prune_flops"), params.get("sparsity"))
    g = cache.get(key) if cache is not None else None
    if g is None:
        g = graph
        if params["prune"] == "channels":
            g = prune(graph, "channels", flops=params["prune_flops"])
        elif params["prune"] == "magnitude":
            g = prune(graph, "magnitude", sparsity=params["sparsity"])
        if recover is not None and params["prune"] != "none":
            g = recover(g)
        if cache is not None:
            cache[key] = g
    mode = params["quantize"]
    if mode == "none":
        return g
    options: dict[str, Any] = {"target": Target(params["backend"])}
    if mode not in ("fp16",):
        options.update(calibration=calibration, error_budget=params.get("error_budget"))
    if mode == "dynamic":
        options["per_token"] = params.get("per_token", False)
    return quantize(g, mode, **options)
