"""``graphopt drift DIR --data new.npz``: exit 1 when the model's accuracy dropped too far."""

from __future__ import annotations

import argparse
import os

import numpy as np

from graphopt.cli._common import CliError, paragraph


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "drift", parents=[common], help="a deployed model's accuracy on new labelled data",
        description=paragraph(
            "Load the model directory DIR, run it on --data (a .npz holding one array per "
            "graph input, items along axis 0, and a 'labels' array) and compare its top-1 "
            "accuracy with the baseline (--baseline, else the manifest's figures). Exits 1 "
            "when it dropped by more than --max-drop points: a scheduler's signal to re-tune "
            "(graphopt tune with the same --storage and --study continues the search)."),
        epilog="example:\n  graphopt drift tuned/model --data this_week.npz --max-drop 1.0 "
        "|| graphopt tune ...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="DIR", help="a model directory")
    p.add_argument("--data", required=True, metavar="NPZ",
                   help="new inputs and their 'labels' (.npz)")
    p.add_argument("--baseline", type=float, default=None, metavar="ACC",
                   help="accuracy (%%) at deployment (default: the manifest's figures)")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="PT",
                   help="largest allowed drop in points (default: %(default)s)")
    p.set_defaults(run=run)


def run(opts) -> int:
    from graphopt.artifact import load_model_dir, read_manifest
    from graphopt.autotune.drift import DriftReport, accuracy, baseline_of
    from graphopt.quant.calibration import items_from_arrays

    if not os.path.isfile(opts.data):
        raise CliError(f"data file not found: {opts.data}")
    graph = load_model_dir(opts.model)
    figures = read_manifest(opts.model)["figures"]
    try:
        with np.load(opts.data, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise CliError(f"{opts.data} is not a numpy .npz: {exc}") from None
    labels = arrays.pop("labels", None)
    if labels is None:
        raise CliError(f"{opts.data} has no 'labels' array (arrays: {sorted(arrays)})")
    data = items_from_arrays(arrays, graph, opts.data)
    if len(labels) != len(data):
        raise CliError(f"{len(labels)} labels for {len(data)} items")
    report = DriftReport(len(data), accuracy(graph, data, labels),
                         baseline_of(figures, opts.baseline), opts.max_drop)
    print(report)
    return 1 if report.drifted else 0
