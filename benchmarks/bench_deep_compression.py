"""Deep Compression of an MLP of LeNet-300-100's shape trained on scikit-learn's digits
(issue #17's first must-show: >= 40x smaller than its float32 file at <= 0.5 pt accuracy loss).

Stages, each through graphopt and measured on the 397 held-out digits:

1. train the float32 model (64 -> 300 -> 100 -> 10, Adam, seeded);
2. magnitude pruning (``graphopt.prune(graph, "magnitude", sparsity=...)``, per layer, the
   paper's 92% / 91% / 74%) and fine-tuning with the zeros kept (``graphopt.prune.finetune``);
3. weight sharing: a k-means codebook per layer (5 bits for the linears, as the paper) -
   accuracy of the shared weights - then centroid fine-tuning (each centroid's gradient is the
   sum of its weights' gradients; ``--centroid-epochs``);
4. encoding: sparse index coding (5-bit gaps) and Huffman coding into a ``.gcm`` file
   (``graphopt.codec.save_weights``); the file is decoded again (``load_weights``) and the
   decoded model is what the last accuracy is measured on.

Prints the per-layer and total table (bytes and ratio after each stage) and writes JSON with
``--json``. Usage: python benchmarks/bench_deep_compression.py [--json PATH]
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
from graphopt.codec import load_weights, save_weights, share_weights
from graphopt.models_digits import batches, load_digits_split, train
from graphopt.prune.structured import set_constant_data

SPARSITY = {"0.weight": 0.92, "2.weight": 0.91, "4.weight": 0.74}  # Han et al.'s LeNet-300-100
BITS = 5
INDEX_BITS = 5


def lenet_300_100() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def accuracy(graph, x, y) -> float:
    logits = graphopt.run(graph, x)
    return float((logits.argmax(1) == y).float().mean()) * 100


def with_weights(graph, weights: dict[str, np.ndarray]):
    out = graph.clone()
    for name, array in weights.items():
        set_constant_data(out.constants[name], array.astype(np.float32))
    return out


def finetune_centroids(graph, weights: dict, bits: dict, data, epochs: int, lr: float = 3e-4):
    """The paper's centroid fine-tuning: each shared layer's weight is centroids[indices]
    (zeros kept), so the gradient of a centroid is the sum of its weights' gradients (autograd
    through the gather); biases train too. Returns the new weights (shared layers decoded)."""
    from graphopt.backends.torch_module import attribute_paths

    module = graphopt.to_torch(graph).graph_module
    paths = attribute_paths(list(weights))
    books = {n: share_weights(w, bits[n], mask=w != 0) for n, w in weights.items() if n in bits}
    train = {n: torch.tensor(b.centroids, requires_grad=True) for n, b in books.items()}
    plain = {n: torch.tensor(w, requires_grad=True) for n, w in weights.items() if n not in bits}
    index = {n: torch.from_numpy(b.indices.astype(np.int64)) for n, b in books.items()}
    keep = {n: torch.from_numpy(weights[n] != 0) for n in books}
    optim = torch.optim.Adam([*train.values(), *plain.values()], lr=lr)

    def current():
        out = {n: torch.where(keep[n], train[n][index[n]], 0.0) for n in books}
        out.update(plain)
        return out

    for _ in range(epochs):
        for xb, yb in data:
            optim.zero_grad()
            params = {paths[n]: t for n, t in current().items()}
            logits = torch.func.functional_call(module, params, (xb,))
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            F.cross_entropy(logits, yb).backward()
            optim.step()
    with torch.no_grad():
        return {n: t.detach().numpy().astype(np.float32) for n, t in current().items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--centroid-epochs", type=int, default=20,
                   help="epochs of centroid fine-tuning after sharing (0: none)")
    p.add_argument("--centroid-lr", type=float, default=3e-3)
    p.add_argument("--bias-bits", type=int, default=0,
                   help="share the biases too, at this many bits (0: store them dense)")
    opts = p.parse_args()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_split()
    t0 = time.perf_counter()
    model = train(lenet_300_100(), x_train, y_train, epochs=opts.epochs)
    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = graphopt.trace(model, (x_train[:8],), dynamic_shapes=({0: batch},))
    names = [n for n in graph.constants if n in SPARSITY or n.endswith(".bias")]
    base_acc = accuracy(graph, x_test, y_test)

    pruned = graph
    for name, sparsity in SPARSITY.items():
        pruned = graphopt.prune(pruned, "magnitude", sparsity=sparsity, exclude=[
            n for n in SPARSITY if n != name] + ["*.bias"])
    pruned_acc_before = accuracy(pruned, x_test, y_test)
    data = batches(x_train, y_train, seed=100)
    pruned = graphopt.finetune(pruned, data, loss=F.cross_entropy,
                               epochs=opts.finetune_epochs, lr=1e-3, progress=False)
    pruned_acc = accuracy(pruned, x_test, y_test)
    weights = {n: np.asarray(pruned.constants[n].data, dtype=np.float32) for n in names}

    bits = {n: BITS for n in SPARSITY}
    if opts.bias_bits:
        bits.update({n: opts.bias_bits for n in names if n not in SPARSITY})
    shared = {n: (share_weights(w, bits[n], mask=w != 0).decode() if n in bits else w)
              for n, w in weights.items()}
    shared_acc = accuracy(with_weights(pruned, shared), x_test, y_test)
    if opts.centroid_epochs:  # retrain the shared values, then store what they became
        weights = finetune_centroids(pruned, weights, bits, data, opts.centroid_epochs,
                                     opts.centroid_lr)
        shared = {n: (share_weights(w, bits[n], mask=w != 0).decode() if n in bits else w)
                  for n, w in weights.items()}
    tuned_acc = accuracy(with_weights(pruned, shared), x_test, y_test)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet.gcm")
        reports = save_weights(path, weights, bits=bits, index_bits=INDEX_BITS)
        file_bytes = os.path.getsize(path)
        t = time.perf_counter()
        decoded = load_weights(path)
        decode_s = time.perf_counter() - t
    final_acc = accuracy(with_weights(pruned, decoded), x_test, y_test)
    exact = all(np.array_equal(decoded[n], shared[n]) for n in names)

    dense_bytes = sum(w.size * 4 for w in weights.values())
    rows = []
    for r in reports:
        w = weights[r.name]
        kept = int(np.count_nonzero(w))
        rows.append({"layer": r.name, "weights": int(w.size), "kept": kept,
                     "dense_bytes": r.dense_bytes,
                     "pruned_ratio": round(w.size / max(kept, 1), 2),
                     "stored_bytes": r.stored_bytes, "ratio": round(r.ratio, 2)})
    result = {
        "benchmark": "deep_compression", "model": "LeNet-300-100 (64 inputs, digits)",
        "machine": machine_info(), "bits": bits, "index_bits": INDEX_BITS,
        "sparsity": SPARSITY, "layers": rows,
        "accuracy": {"float32": base_acc, "pruned_before_finetune": pruned_acc_before,
                     "pruned": pruned_acc, "shared": shared_acc,
                     "shared_finetuned": tuned_acc, "decoded_file": final_acc},
        "dense_bytes": dense_bytes, "file_bytes": file_bytes,
        "file_ratio": round(dense_bytes / file_bytes, 2),
        "accuracy_loss_pt": round(base_acc - final_acc, 2),
        "decode_s": round(decode_s, 4), "decoded_equals_shared": exact,
        "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{'layer':10s} {'weights':>8s} {'kept':>7s} {'dense B':>9s} {'file B':>8s} ratio")
    for r in rows:
        print(f"{r['layer']:10s} {r['weights']:8d} {r['kept']:7d} {r['dense_bytes']:9d} "
              f"{r['stored_bytes']:8d} {r['ratio']:6.1f}x")
    print(f"total: {dense_bytes} B float32 -> {file_bytes} B .gcm = {result['file_ratio']}x; "
          f"accuracy float32 {base_acc:.2f} / pruned {pruned_acc:.2f} / shared "
          f"{shared_acc:.2f} / centroids tuned {tuned_acc:.2f} / decoded file {final_acc:.2f} % "
          f"(loss "
          f"{result['accuracy_loss_pt']} pt); decode {decode_s * 1e3:.1f} ms")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
