"""Deep Compression of LeNet-300-100 and LeNet-5 shaped models trained on scikit-learn's digits
(issue #17's must-shows: >= 40x / >= 35x smaller than the float32 parameters at <= 0.5 pt
accuracy loss, with the per-stage table).

Stages, each through graphopt's public API:

1. train the float32 model (Adam, seeded);
2. magnitude pruning per layer (``graphopt.prune(graph, "magnitude", sparsity=...)``), reached
   in ``--prune-steps`` rounds with the density shrinking geometrically, each followed by
   fine-tuning with the zeros kept (``graphopt.finetune``; ``--distill`` adds knowledge
   distillation from the float model);
3. weight sharing (``graphopt.quantize(graph, "codebook", bits=..., conv_bits=...)``: a k-means
   codebook per layer, ``codebook_decode`` in the IR), then centroid fine-tuning
   (``graphopt.finetune`` on the shared graph trains the centroids);
4. encoding (``graphopt.compress``: sparse index coding + Huffman into a ``.gcm`` file), read
   back with ``graphopt.load``; the loaded graph is what the last accuracy is measured on.

Settings are chosen on a validation split held out of the training digits (``--validation``);
the 397 test digits only report. ``--seeds N`` repeats the whole chain with N initializations
and data orders and reports the mean and the worst case. Prints the paper's per-layer table
(bytes after pruning, after sharing, after Huffman) and writes JSON with ``--json``.

Usage: python benchmarks/bench_deep_compression.py [--model lenet-5] [--seeds 3] [--json PATH]
(``--json`` adds the model's entry to PATH; the published numbers in docs/compression.md are
rendered from benchmarks/results/published/deep_compression.json by render_results.py).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphopt
from graphopt.backends.compressed_model import load_compressed
from graphopt.bench.machine import machine_info
from graphopt.models_digits import batches, load_digits_split, train

SCHEMA = "graphopt-deep-compression/1"
# Han et al.'s per-layer sparsities for these architectures (Tables 2 and 3 of the paper).
MODELS = {
    "lenet-300-100": {"sparsity": "0.92,0.91,0.74", "bits": 5, "conv_bits": 8},
    "lenet-5": {"sparsity": "0.34,0.88,0.92,0.81", "bits": 5, "conv_bits": 8},
}


def lenet_300_100() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def lenet_5() -> nn.Module:
    """LeNet-5 of the paper (Caffe's: 20 and 50 5x5 filters, 500 hidden units) on 8x8 digits:
    'same' padding keeps the two poolings meaningful (8 -> 4 -> 2)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(50 * 2 * 2, 500), nn.ReLU(), nn.Linear(500, 10))


def accuracy(graph, x, y) -> float:
    logits = graphopt.run(graph, x)
    return float((logits.argmax(1) == y).float().mean()) * 100


def split(validation: float):
    x_train, y_train, x_test, y_test = load_digits_split()
    n_val = int(len(x_train) * validation)
    keep = len(x_train) - n_val
    return (x_train[:keep], y_train[:keep]), (x_train[keep:], y_train[keep:]), (x_test, y_test)


def prune_and_tune(graph, opts, data, teacher, measure):
    names = list(dict.fromkeys(v.name for node in graph.nodes for v in node.inputs
                               if v is not None and v.is_constant and v.name.endswith(".weight")))
    targets = dict(zip(names, (float(v) for v in opts.sparsity.split(","))))
    pruned = graph
    for step in range(1, opts.prune_steps + 1):  # iterative pruning: prune, retrain, repeat
        for name, target in targets.items():
            level = 1.0 - (1.0 - target) ** (step / opts.prune_steps)  # geometric density
            pruned = graphopt.prune(pruned, "magnitude", sparsity=level,
                                    exclude=[n for n in names if n != name] + ["*.bias"])
        if step == 1:
            measure("pruned_before_finetune", pruned)
        pruned = graphopt.finetune(pruned, data, loss=F.cross_entropy, teacher=teacher,
                                   epochs=opts.finetune_epochs, lr=1e-3, seed=opts.seed,
                                   progress=False)
    measure("pruned", pruned)
    return pruned, targets


def run_once(opts, seed: int) -> dict:
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split(opts.validation)
    acc, val_acc = {}, {}

    def measure(stage: str, graph) -> None:
        acc[stage] = accuracy(graph, x_test, y_test)
        if len(x_val):
            val_acc[stage] = accuracy(graph, x_val, y_val)

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = train({"lenet-300-100": lenet_300_100, "lenet-5": lenet_5}[opts.model](),
                  x_train, y_train, opts.epochs, seed)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = graphopt.trace(model, (x_train[:8],), dynamic_shapes=({0: batch},))
    measure("float32", graph)
    data = batches(x_train, y_train, seed=100 + seed)
    teacher = graph if opts.distill else None
    opts.seed = seed
    pruned, targets = prune_and_tune(graph, opts, data, teacher, measure)
    shared = graphopt.quantize(pruned, "codebook", bits=opts.bits, conv_bits=opts.conv_bits,
                               bias_bits=opts.bias_bits)
    measure("shared", shared)
    if opts.centroid_epochs:  # the centroids (and float biases) train; indices and zeros stay
        shared = graphopt.finetune(shared, data, loss=F.cross_entropy, teacher=teacher,
                                   epochs=opts.centroid_epochs, lr=opts.centroid_lr, seed=seed,
                                   progress=False)
    measure("shared_finetuned", shared)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.gcm")
        graphopt.compress(shared, path)
        loaded, info = load_compressed(path, report=True)
    measure("decoded_file", loaded)
    exact = all(np.array_equal(loaded.constants[n].data, v.data)
                for n, v in shared.constants.items())
    return {"seed": seed, "sparsity": targets, "layers": [r.to_dict() for r in info.stages()],
            "accuracy": acc, "validation_accuracy": val_acc,
            "accuracy_loss_pt": round(acc["float32"] - acc["decoded_file"], 2),
            "validation_loss_pt": round(val_acc["float32"] - val_acc["decoded_file"], 2)
            if val_acc else None,
            "dense_bytes": info.dense_bytes, "file_bytes": info.file_bytes,
            "file_ratio": round(info.ratio, 2), "decode_s": round(info.decode_seconds, 4),
            "decoded_equals_shared": exact, "info": info,
            "seconds": round(time.perf_counter() - t0, 1)}


def print_run(run: dict) -> None:
    print(f"seed {run['seed']}:")
    print(run["info"])
    print("  validation: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                       run["validation_accuracy"].items()))
    print("  test:       " + ", ".join(f"{k} {v:.2f}" for k, v in run["accuracy"].items()))
    print(f"  loss {run['accuracy_loss_pt']} pt (validation {run['validation_loss_pt']} pt); "
          f"file {run['file_bytes']} B = {run['file_ratio']}x; decode "
          f"{run['decode_s'] * 1e3:.1f} ms; bit-exact {run['decoded_equals_shared']}")


def summary(runs: list[dict]) -> dict:
    def stats(key):
        values = [r[key] for r in runs if r[key] is not None]
        return {"mean": round(float(np.mean(values)), 2), "worst": max(values),
                "best": min(values)} if key.endswith("_pt") else \
            {"mean": round(float(np.mean(values)), 2), "worst": min(values),
             "best": max(values)}

    return {"accuracy_loss_pt": stats("accuracy_loss_pt"),
            "validation_loss_pt": stats("validation_loss_pt"), "file_ratio": stats("file_ratio")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="lenet-300-100")
    p.add_argument("--json", default=None)
    p.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--centroid-epochs", type=int, default=20,
                   help="epochs of centroid fine-tuning after sharing (0: none)")
    p.add_argument("--centroid-lr", type=float, default=3e-3)
    p.add_argument("--bits", type=int, default=None, help="codebook bits of linear layers")
    p.add_argument("--conv-bits", type=int, default=None, help="codebook bits of convolutions")
    p.add_argument("--bias-bits", type=int, default=None,
                   help="share the biases too, at this many bits (default: float)")
    p.add_argument("--sparsity", default=None,
                   help="per-layer sparsities of the weights in order, comma-separated "
                   "(default: the paper's for the model)")
    p.add_argument("--prune-steps", type=int, default=1,
                   help="reach the sparsity in this many prune + fine-tune rounds")
    p.add_argument("--validation", type=float, default=0.2,
                   help="fraction of the training digits held out to choose settings on")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune with knowledge distillation from the float model too")
    opts = p.parse_args()
    for key, value in MODELS[opts.model].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    t0 = time.perf_counter()
    runs = [run_once(opts, seed) for seed in range(opts.seeds)]
    for run in runs:
        print_run(run)
    total = summary(runs)
    print(f"{opts.model}, {opts.seeds} seed(s): ratio mean {total['file_ratio']['mean']}x "
          f"(worst {total['file_ratio']['worst']}x); test loss mean "
          f"{total['accuracy_loss_pt']['mean']} pt (worst {total['accuracy_loss_pt']['worst']}); "
          f"validation loss mean {total['validation_loss_pt']['mean']} pt (worst "
          f"{total['validation_loss_pt']['worst']})")
    if opts.json:
        settings = {k: v for k, v in vars(opts).items() if k not in ("json", "seed")}
        result = {"model": opts.model, "machine": machine_info(), "settings": settings,
                  "summary": total,
                  "runs": [{k: v for k, v in r.items() if k != "info"} for r in runs],
                  "seconds": round(time.perf_counter() - t0, 1)}
        write_json(opts.json, result)


def write_json(path: str, result: dict) -> None:
    """Add (or replace) this model's entry in ``path`` (one file holds every model)."""
    data = {"schema": SCHEMA, "models": {}}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("schema") == SCHEMA:
            data = old
    data["models"][result["model"]] = result
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
