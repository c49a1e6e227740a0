"""Walkthrough: fine-tune a pretrained VGG-style CNN on a new task, prune it, distill it, share
its weights, Huffman-code it, lower it to the native runtime and benchmark every stage.

The article's worked example, end to end on 2 CPU cores (a few minutes; no downloads):

1. **Pretrain** a VGG-16-layout CNN (13 convs in 5 blocks, batch norm, narrow widths) on a
   synthetic-shapes task (circles, squares, triangles, crosses, bars: ``make_shapes``).
2. **Fine-tune** it on another task: scikit-learn's digits, upsampled to 32x32, with a new head.
3. **Structured pruning** (``graphopt.prune(graph, flops=0.5)``: L1-norm channel removal) with
   recovery fine-tuning by knowledge distillation from the fine-tuned model.
4. **Unstructured pruning** of what is left (``graphopt.prune(graph, "magnitude")``), recovered
   the same way.
5. **Weight sharing** (``graphopt.quantize(graph, "codebook")``) and centroid fine-tuning.
6. **Encoding** (``graphopt.compress`` -> ``.gcm``, read back with ``graphopt.load``).
7. **Lowering and benchmark**: the float model and each stage on the native runtime, batch 1,
   interleaved rounds, medians.

Every stage prints scikit-learn's ``classification_report`` on the test digits (tqdm shows the
epochs and batches); the end prints a table of FLOPs, file size, accuracy and native latency per
stage, draws it (``--plot``, matplotlib) and writes it as JSON (``--json``).

Usage: python examples/compress_vgg.py [--out DIR] [--json PATH] [--plot PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import classification_report
from tqdm import tqdm

import graphopt
from graphopt.models_digits import batches, load_digits_split
from graphopt.prune.flops import count_flops

VGG16 = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]  # x width
SHAPES = ("circle", "square", "triangle", "cross", "bar")
TITLE = "VGG-16-layout CNN on digits: Deep Compression stage by stage"


def vgg16_narrow(width: int = 8, classes: int = 10) -> nn.Module:
    """VGG-16's layout (13 3x3 convs with batch norm, 5 max-pools) at 1/64 of its widths, for
    1x32x32 inputs; the classifier is VGG's two hidden layers, narrowed."""
    layers, channels = [], 1
    for item in VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            out = item * width
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels, 64), nn.ReLU(),
                         nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))


def make_shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` 32x32 grayscale images of the SHAPES at random positions, sizes and
    intensities, with noise; labels are indices into SHAPES."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    images = np.zeros((count, 1, 32, 32), np.float32)
    labels = rng.integers(0, len(SHAPES), count)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(10, 22, 2)
        r = rng.uniform(5, 9)
        dy, dx = yy - cy, xx - cx
        mask = {
            0: dy ** 2 + dx ** 2 <= r ** 2,
            1: (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8),
            2: (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55),
            3: ((np.abs(dy) <= r * 0.25) | (np.abs(dx) <= r * 0.25)) & (np.abs(dy) <= r)
            & (np.abs(dx) <= r),
            4: (np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r),
        }[int(label)]
        images[i, 0] = mask * rng.uniform(0.6, 1.0) + rng.normal(0, 0.1, (32, 32))
    return torch.from_numpy(images), torch.from_numpy(labels)


def digits_32() -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits (train / test split of graphopt.models_digits) at 32x32."""
    x_train, y_train, x_test, y_test = load_digits_split()

    def up(x):
        return F.interpolate(x.reshape(-1, 1, 8, 8), size=32, mode="bilinear",
                             align_corners=False)

    return up(x_train), y_train, up(x_test), y_test


def train_eager(model: nn.Module, x, y, epochs: int, lr: float, what: str) -> nn.Module:
    optim = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in tqdm(range(epochs), desc=what, unit="epoch"):
        for xb, yb in tqdm(batches(x, y, seed=epoch), desc=f"epoch {epoch + 1}", unit="batch",
                           leave=False):
            optim.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optim.step()
    return model.eval()


def evaluate(stage: str, graph, x, y) -> float:
    """Accuracy of ``graph`` on (x, y), with scikit-learn's per-class report printed."""
    predicted = graphopt.run(graph, x).argmax(1).numpy()
    print(f"\n== {stage}: per-class precision / recall on the test digits")
    print(classification_report(y.numpy(), predicted, digits=3, zero_division=0))
    return float((predicted == y.numpy()).mean() * 100)


def file_bytes(graph, folder: str, name: str, huffman: bool) -> int:
    """Size of ``graph`` as a .gcm file (float constants raw or deflated). Codebook indices are
    counted Huffman-coded with ``huffman``, else at their fixed width in the sparse format
    (the paper's "after quantization" stage; ``CompressedFile.stages``)."""
    from graphopt.backends.compressed_model import save_compressed

    written = save_compressed(graph, os.path.join(folder, name + ".gcm"))
    if huffman:
        return written.file_bytes
    stages = written.stages()
    return written.file_bytes + sum(r.shared_bytes - r.huffman_bytes for r in stages)


def native_latency(graphs: dict[str, object], x, rounds: int) -> dict[str, float]:
    """Median ms per batch-1 call of each graph on the native runtime: interleaved rounds in a
    rotating order (a noisy machine slows every variant alike), after a warm-up."""
    modules = {name: graphopt.compile(g, backend="native") for name, g in graphs.items()}
    times: dict[str, list[float]] = {name: [] for name in modules}
    names = list(modules)
    for module in modules.values():
        for _ in range(10):
            module(x)
    for r in tqdm(range(rounds), desc="native latency", unit="round"):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(20):
                modules[name](x)
            times[name].append((time.perf_counter() - start) / 20 * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def pretrained_then_finetuned(opts) -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    shapes_x, shapes_y = make_shapes(opts.shapes, seed=0)
    test_x, test_y = make_shapes(500, seed=1)
    model = train_eager(vgg16_narrow(classes=len(SHAPES)), shapes_x, shapes_y,
                        opts.pretrain_epochs, 2e-3, "pretrain on shapes")
    with torch.no_grad():
        shapes_acc = float((model(test_x).argmax(1) == test_y).float().mean() * 100)
    print(f"pretrained on synthetic shapes: {shapes_acc:.1f}% on held-out shapes")
    model[-1] = nn.Linear(64, 10)  # the new task's head; the features transfer
    x_train, y_train, _, _ = digits_32()
    model = train_eager(model, x_train, y_train, opts.finetune_epochs, 1e-3,
                        "fine-tune on digits")
    return model, shapes_acc


def compress_stages(graph, opts, data, folder):
    """Every stage after the float model: (name, graph) in order, each recovered by
    distillation from the float graph and evaluated."""
    def recover(g, epochs, lr=1e-3):
        return graphopt.finetune(g, data, loss=F.cross_entropy, teacher=graph, epochs=epochs,
                                 lr=lr, progress=True)

    structured = recover(graphopt.prune(graph, flops=opts.flops), opts.recover_epochs)
    sparse = recover(graphopt.prune(structured, "magnitude", sparsity=opts.sparsity),
                     opts.recover_epochs)
    shared = recover(graphopt.quantize(sparse, "codebook", bits=opts.bits,
                                       conv_bits=opts.conv_bits, bias_bits=opts.bias_bits),
                     opts.recover_epochs, lr=3e-3)
    path = os.path.join(folder, "vgg.gcm")
    graphopt.compress(shared, path)
    encoded = graphopt.load(path)
    return [(f"structured pruning (FLOPs -{opts.flops:.0%})", structured),
            (f"+ magnitude pruning ({opts.sparsity:.0%})", sparse),
            (f"+ weight sharing ({opts.bits}/{opts.conv_bits}-bit codebooks)", shared),
            ("+ Huffman: the .gcm file, loaded", encoded)]


def print_table(rows: list[dict]) -> None:
    base = rows[0]
    print(f"\n{'stage':44s} {'MFLOPs':>8s} {'file':>10s} {'smaller':>8s} {'accuracy':>9s} "
          f"{'native ms':>9s} {'speed-up':>8s}")
    for r in rows:
        print(f"{r['stage']:44s} {r['flops'] / 1e6:8.2f} {r['file_bytes']:10,d} "
              f"{base['file_bytes'] / r['file_bytes']:7.1f}x {r['accuracy']:8.2f}% "
              f"{r['native_ms']:9.3f} {base['native_ms'] / r['native_ms']:7.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=int, default=3000, help="synthetic pretraining images")
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--finetune-epochs", type=int, default=25)
    p.add_argument("--recover-epochs", type=int, default=8)
    p.add_argument("--flops", type=float, default=0.5, help="fraction of FLOPs removed")
    p.add_argument("--sparsity", type=float, default=0.6, help="then zero this fraction")
    p.add_argument("--bits", type=int, default=5)
    p.add_argument("--conv-bits", type=int, default=5)
    p.add_argument("--bias-bits", type=int, default=None)
    p.add_argument("--rounds", type=int, default=60, help="latency rounds (20 calls each)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="draw the stage table (PNG)")
    p.add_argument("--quick", action="store_true", help="fewer epochs and rounds (a smoke run)")
    opts = p.parse_args()
    if opts.quick:
        opts.shapes, opts.pretrain_epochs, opts.finetune_epochs = 600, 1, 2
        opts.recover_epochs, opts.rounds = 1, 5
    t0 = time.perf_counter()
    model, shapes_acc = pretrained_then_finetuned(opts)
    x_train, y_train, x_test, y_test = digits_32()
    batch = torch.export.Dim("batch", min=1, max=2048)
    graph = graphopt.optimize(
        graphopt.trace(model, (x_test[:8],), dynamic_shapes=({0: batch},)), "default")
    data = batches(x_train, y_train, seed=7)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        stages = [("float32 (fine-tuned)", graph)]
        stages += compress_stages(graph, opts, data, folder)
        for i, (name, g) in enumerate(stages):
            rows.append({"stage": name, "flops": count_flops(g).total,
                         "file_bytes": file_bytes(g, folder, f"stage{i}",
                                                  huffman=i == len(stages) - 1),
                         "accuracy": evaluate(name, g, x_test, y_test)})
        latency = native_latency({r["stage"]: g for r, (_, g) in zip(rows, stages)},
                                 x_test[:1], opts.rounds)
    for r in rows:
        r["native_ms"] = latency[r["stage"]]
    print_table(rows)
    from graphopt.bench.machine import machine_info

    result = {"example": "compress_vgg", "machine": machine_info(),
              "pretrain_shapes_accuracy": shapes_acc,
              "settings": {k: v for k, v in vars(opts).items() if k not in ("json", "plot")},
              "stages": rows, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"total {result['seconds']} s")
    if opts.plot:
        from graphopt.bench.plot import plot_stages

        plot_stages(rows, opts.plot, TITLE)
        print(f"plot: {opts.plot}")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
