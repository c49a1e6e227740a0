"""Deep Compression of an MLP of LeNet-300-100's shape trained on scikit-learn's digits
(issue #17's first must-show: >= 40x smaller than its float32 file at <= 0.5 pt accuracy loss).

Stages, each through graphopt's public API and measured on the 397 held-out digits:

1. train the float32 model (64 -> 300 -> 100 -> 10, Adam, seeded);
2. magnitude pruning (``graphopt.prune(graph, "magnitude", sparsity=...)``, per layer, the
   paper's 92% / 91% / 74%) and fine-tuning with the zeros kept (``graphopt.finetune``);
3. weight sharing (``graphopt.quantize(graph, "codebook", bits=5)``: a k-means codebook per
   layer, ``codebook_decode`` in the IR), then centroid fine-tuning (``graphopt.finetune`` on the
   shared graph trains the centroids: each one's gradient is the sum of its weights');
4. encoding (``graphopt.compress``: sparse index coding + Huffman into a ``.gcm`` file), read
   back with ``graphopt.load``; the loaded graph is what the last accuracy is measured on.

Prints the paper's per-layer table (bytes after pruning, after sharing, after Huffman) and
writes JSON with ``--json``. Usage: python benchmarks/bench_deep_compression.py [--json PATH]
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
from graphopt.bench.machine import machine_info
from graphopt.models_digits import batches, load_digits_split, train

SPARSITY = {"0.weight": 0.92, "2.weight": 0.91, "4.weight": 0.74}  # Han et al.'s LeNet-300-100
BITS = 5


def lenet_300_100() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def accuracy(graph, x, y) -> float:
    logits = graphopt.run(graph, x)
    return float((logits.argmax(1) == y).float().mean()) * 100


def stage_rows(info, bits: int) -> list[dict]:
    """The paper's Table: per shared layer, bytes after pruning (kept float32 + gap index),
    after sharing (kept codebook index + gap index + codebook) and after Huffman (the file)."""
    by_name = {c.name: c for c in info.constants}
    rows = []
    for c in info.constants:
        if c.encoding != "indices":
            continue
        layer = c.name[: -len(".indices")]
        book = by_name.get(layer + ".centroids")
        book_bytes = book.stored_bytes if book else 0
        elements = int(np.prod(c.shape))
        rows.append({
            "layer": layer, "weights": elements, "kept": c.kept,
            "kept_pct": round(100 * c.kept / max(elements, 1), 1),
            "dense_bytes": c.dense_bytes,
            "pruned_bytes": (c.entries * (32 + c.gap_bits) + 7) // 8,
            "shared_bytes": (c.entries * (bits + c.gap_bits) + 7) // 8 + book_bytes,
            "huffman_bytes": c.stored_bytes + book_bytes,
            "gap_bits": c.gap_bits})
        rows[-1]["ratio"] = round(rows[-1]["dense_bytes"] / rows[-1]["huffman_bytes"], 2)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--centroid-epochs", type=int, default=20,
                   help="epochs of centroid fine-tuning after sharing (0: none)")
    p.add_argument("--centroid-lr", type=float, default=3e-3)
    p.add_argument("--bits", type=int, default=BITS)
    opts = p.parse_args()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    t0 = time.perf_counter()
    model = train(lenet_300_100(), x_train, y_train, epochs=opts.epochs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = graphopt.trace(model, (x_train[:8],), dynamic_shapes=({0: batch},))
    acc = {"float32": accuracy(graph, x_test, y_test)}

    pruned = graph
    for name, sparsity in SPARSITY.items():
        pruned = graphopt.prune(pruned, "magnitude", sparsity=sparsity, exclude=[
            n for n in SPARSITY if n != name] + ["*.bias"])
    acc["pruned_before_finetune"] = accuracy(pruned, x_test, y_test)
    data = batches(x_train, y_train, seed=100)
    pruned = graphopt.finetune(pruned, data, loss=F.cross_entropy,
                               epochs=opts.finetune_epochs, lr=1e-3, progress=False)
    acc["pruned"] = accuracy(pruned, x_test, y_test)

    shared = graphopt.quantize(pruned, "codebook", bits=opts.bits)
    acc["shared"] = accuracy(shared, x_test, y_test)
    if opts.centroid_epochs:  # the centroids (and biases) train; indices and zeros stay
        shared = graphopt.finetune(shared, data, loss=F.cross_entropy,
                                   epochs=opts.centroid_epochs, lr=opts.centroid_lr,
                                   progress=False)
    acc["shared_finetuned"] = accuracy(shared, x_test, y_test)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet.gcm")
        graphopt.compress(shared, path)
        loaded, info = graphopt.backends.compressed_model.load_compressed(path, report=True)
    acc["decoded_file"] = accuracy(loaded, x_test, y_test)
    exact = all(np.array_equal(loaded.constants[n].data, v.data)
                for n, v in shared.constants.items())
    rows = stage_rows(info, opts.bits)
    result = {
        "benchmark": "deep_compression", "model": "LeNet-300-100 (64 inputs, digits)",
        "machine": machine_info(), "bits": opts.bits, "sparsity": SPARSITY, "layers": rows,
        "accuracy": acc, "dense_bytes": info.dense_bytes, "file_bytes": info.file_bytes,
        "file_ratio": round(info.ratio, 2),
        "accuracy_loss_pt": round(acc["float32"] - acc["decoded_file"], 2),
        "decode_s": round(info.decode_seconds, 4), "decoded_equals_shared": exact,
        "constants": [{"name": c.name, "encoding": c.encoding, "dense_bytes": c.dense_bytes,
                       "stored_bytes": c.stored_bytes} for c in info.constants],
        "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{'layer':10s} {'weights':>8s} {'kept':>6s} {'dense B':>9s} {'pruned B':>9s} "
          f"{'shared B':>9s} {'huffman B':>10s} ratio")
    for r in rows:
        print(f"{r['layer']:10s} {r['weights']:8d} {r['kept_pct']:5.1f}% {r['dense_bytes']:9d} "
              f"{r['pruned_bytes']:9d} {r['shared_bytes']:9d} {r['huffman_bytes']:10d} "
              f"{r['ratio']:5.1f}x")
    print(info)
    print("accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()) +
          f" (loss {result['accuracy_loss_pt']} pt); file {info.file_bytes} B = "
          f"{result['file_ratio']}x; decode {info.decode_seconds * 1e3:.1f} ms; "
          f"bit-exact {exact}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
