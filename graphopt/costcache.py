"""Measured costs, cached per machine: what speed-aware compression learns once and reuses.

A micro-benchmark of one layer (graphopt/quant/layer_cost.py) costs a compile and a few hundred
calls; its result depends on the machine (CPU model, ISA, usable cores), the thread count, the
backend and its version, graphopt's own version and the build of its native extension, and on
nothing else. ``CostCache`` keeps
such results in one JSON file, entries grouped under a machine key built from exactly those, so
a measurement is reused on the machine that made it and never on another (a cache copied to a
different CPU, or read after an upgrade, simply misses).

Where: ``$GRAPHOPT_CACHE_DIR/costs.json``, else ``$XDG_CACHE_HOME/graphopt/costs.json``, else
``~/.cache/graphopt/costs.json``; ``GRAPHOPT_CACHE_DIR=off`` keeps the cache in memory only.
The file is only ever parsed as JSON (bounded size); a corrupt or foreign file is reported with a
warning and replaced on the next save, never trusted.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import warnings
from typing import Any

from graphopt.fileio import atomic_write
from graphopt.version import __version__

FORMAT = "graphopt-cost-cache"
VERSION = 1
MAX_FILE_BYTES = 16 << 20
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "neon")


class CostCacheWarning(UserWarning):
    """The cost cache file could not be read or written (measurements are redone)."""


@functools.lru_cache(maxsize=1)
def cpu_description() -> tuple[str, tuple[str, ...]]:
    """This CPU's model name and which of ``ISA_FLAGS`` it has (from /proc/cpuinfo on Linux;
    read once per process: every cost-cache lookup asks)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown", "", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, tuple(f for f in ISA_FLAGS if f in flags)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_key(**parts: Any) -> str:
    """The key measurements on this machine are filed under: CPU model, ISA flags, usable
    cores, graphopt's version, the native build and the caller's ``parts`` (backend, its
    version, threads)."""
    model, flags = cpu_description()
    fields = {"cpu": model, "isa": flags, "cpus": usable_cpus(), "graphopt": __version__,
              "native_build": native_build(), **{k: parts[k] for k in sorted(parts)}}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=1)
def native_build() -> str:
    """Which build of the native extension this is (its file's size and modification time):
    a rebuilt runtime (new kernels, same version number) must not reuse old measurements."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("graphopt._C")
        stat = os.stat(spec.origin) if spec is not None and spec.origin else None
    except (ImportError, OSError, ValueError):
        stat = None
    return "none" if stat is None else f"{stat.st_size}-{int(stat.st_mtime)}"


def default_path() -> str | None:
    """Where the cache lives (see the module docstring); None: in memory only."""
    folder = os.environ.get("GRAPHOPT_CACHE_DIR")
    if folder is not None:
        return None if folder.strip().lower() in ("", "off", "none") else \
            os.path.join(folder, "costs.json")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "graphopt", "costs.json")


class CostCache:
    """Measurements filed by machine key and by what was measured (``get`` / ``put``; ``save``
    writes the file atomically, merged with what other processes saved meanwhile)."""

    def __init__(self, path: str | None = "default"):
        self.path = default_path() if path == "default" else path
        self._machines: dict[str, dict[str, Any]] = self._read()
        self._dirty: dict[str, dict[str, Any]] = {}

    def get(self, machine: str, key: str) -> dict[str, Any] | None:
        entry = self._machines.get(machine, {}).get(key)
        return entry if isinstance(entry, dict) else None

    def put(self, machine: str, key: str, record: dict[str, Any]) -> None:
        self._machines.setdefault(machine, {})[key] = record
        self._dirty.setdefault(machine, {})[key] = record

    def __len__(self) -> int:
        return sum(len(v) for v in self._machines.values())

    def save(self) -> None:
        """Write the new entries (no-op in memory or when nothing is new). A failure to write
        warns: a cache must never fail the work it speeds up."""
        if self.path is None or not self._dirty:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            merged = self._read(quiet=True)  # another process may have saved meanwhile
            for machine, entries in self._dirty.items():
                merged.setdefault(machine, {}).update(entries)
            with atomic_write(self.path, "w") as f:
                json.dump({"format": FORMAT, "version": VERSION, "machines": merged}, f)
            self._machines, self._dirty = merged, {}
        except OSError as e:
            warnings.warn(f"cost cache {self.path}: not saved ({e})", CostCacheWarning,
                          stacklevel=2)

    def _read(self, quiet: bool = False) -> dict[str, dict[str, Any]]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        problem = None
        try:
            if os.path.getsize(self.path) > MAX_FILE_BYTES:
                problem = f"larger than {MAX_FILE_BYTES >> 20} MiB"
            else:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
                if (isinstance(data, dict) and data.get("format") == FORMAT
                        and data.get("version") == VERSION
                        and isinstance(data.get("machines"), dict)
                        and all(isinstance(v, dict) for v in data["machines"].values())):
                    return data["machines"]
                problem = "not a graphopt cost cache of this version"
        except (OSError, ValueError, RecursionError) as e:  # bad JSON, encoding, nesting
            problem = f"unreadable ({type(e).__name__}: {e})"
        if not quiet:
            warnings.warn(f"cost cache {self.path}: {problem}; ignored (measurements are redone "
                          "and the file is replaced on the next save)", CostCacheWarning,
                          stacklevel=3)
        return {}
