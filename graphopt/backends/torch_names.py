"""Python names for what ``to_torch`` generates: module attribute paths of constants and
parameter names of graph inputs (valid identifiers, unique, stable across runs)."""

from __future__ import annotations

import functools
import keyword
import re
from typing import Sequence

import torch

def attribute_paths(names: Sequence[str]) -> dict[str, str]:
    """Map constant names to unique, valid module attribute paths (``fc1.weight`` kept as is).

    Segments that are Python keywords or clash with ``nn.Module``/``GraphModule`` attributes get
    a trailing ``_``; a name that is also the prefix of another (``a`` and ``a.b``: a tensor
    cannot also be a submodule) becomes ``a_``. The result depends only on ``names``, so the
    ``state_dict`` keys are stable.
    """
    top_reserved, nested_reserved = _reserved_attributes()
    candidates = {}
    for name in names:
        segments = [s for s in name.split(".") if s] or ["const"]
        fixed = []
        for depth, seg in enumerate(segments):
            seg = re.sub(r"\W", "_", seg)
            reserved = top_reserved if depth == 0 else nested_reserved
            if keyword.iskeyword(seg) or seg in reserved:
                seg += "_"
            fixed.append(seg)
        candidates[name] = ".".join(fixed)
    prefixes = {
        path.rsplit(".", i)[0]
        for path in candidates.values()
        for i in range(1, path.count(".") + 1)
    }
    used: set[str] = set()
    paths = {}
    for name, path in candidates.items():
        while path in used or path in prefixes:
            path += "_"
        used.add(path)
        paths[name] = path
    return paths


@functools.lru_cache(maxsize=1)
def _reserved_attributes() -> tuple[frozenset[str], frozenset[str]]:
    module = torch.nn.Module()
    graph_module = torch.fx.GraphModule(module, torch.fx.Graph())
    return frozenset(dir(graph_module)), frozenset(dir(module))


def _argument_name(name: str, taken: set[str]) -> str:
    """A valid, unique Python parameter name for a graph input."""
    base = re.sub(r"\W", "_", name) or "input"
    if base[0].isdigit():
        base = "_" + base
    if keyword.iskeyword(base) or base == "self":
        base += "_"
    candidate, i = base, 0
    while candidate in taken:
        i += 1
        candidate = f"{base}_{i}"
    taken.add(candidate)
    return candidate
