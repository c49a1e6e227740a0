"""Calibration data from a file, for the ``quantize-static`` pass and ``graphopt quantize``.

A ``.npz`` (``numpy.savez``) holds one array per graph input, named after the input (or
``arr_0``, ``arr_1``, ... in input order, as ``np.savez(path, x)`` writes them). The first axis
indexes calibration items: item ``i`` feeds ``array[i]`` to that input, so a ``[N, B, 64]``
array gives N argument tuples of a ``[B, 64]`` input.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from graphopt.errors import QuantizationError
from graphopt.ir.graph import Graph


def load_calibration(path: str | os.PathLike, graph: Graph) -> list[tuple]:
    """Argument tuples for ``graph`` from the ``.npz`` at ``path`` (see the module doc).

    Raises:
        FileNotFoundError: no such file.
        QuantizationError: not an .npz, arrays that do not match the graph's inputs by name or
            count, or that disagree on the number of items.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "calibration file not found", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise QuantizationError(f"calibration file {path} is not a numpy .npz: {exc}") from None
    return items_from_arrays(arrays, graph, f"calibration file {path}")


def items_from_arrays(arrays: dict[str, np.ndarray], graph: Graph, where: str) -> list[tuple]:
    """Argument tuples for ``graph`` from named arrays (see the module doc); ``where`` names
    their source in errors."""
    names = [v.name for v in graph.inputs]
    if set(arrays) == set(names):
        ordered = [arrays[n] for n in names]
    elif set(arrays) == {f"arr_{i}" for i in range(len(names))}:
        ordered = [arrays[f"arr_{i}"] for i in range(len(names))]
    else:
        raise QuantizationError(
            f"{where} has arrays {sorted(arrays)}; the graph's inputs are "
            f"{', '.join('%' + n for n in names)} (name the arrays after them, or arr_0, ...)")
    counts = {a.shape[0] if a.ndim else 0 for a in ordered}
    if len(counts) != 1 or 0 in counts:
        raise QuantizationError(
            f"{where}: every array needs the same, non-zero number of items "
            f"along axis 0, got shapes {[list(a.shape) for a in ordered]}")
    return [tuple(a[i] for a in ordered) for i in range(counts.pop())]
