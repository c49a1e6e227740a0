"""What machine and software a benchmark ran on, and per-process memory probes (Linux /proc)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from typing import Any

from graphopt.costcache import cpu_description, usable_cpus
from graphopt.stagereport import PeakMeter

_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon")
_PACKAGES = ("torch", "onnxruntime", "onnx", "onnxscript", "numpy", "transformers", "graphopt")


def machine_info() -> dict[str, Any]:
    """CPU model, CPU counts, SIMD flags, memory, OS, Python and package versions."""
    cpu_model, flags = cpu_description()
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cpu_flags": [f for f in _FLAGS if f in flags],
        "memory_gib": _total_memory_gib(),
        "load_avg_1m": _load_average(),
        "competing_cpus": competing_cpu_load(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": package_versions(),
        "threading": threading_info(),
    }


# Environment variables that change how the timed libraries schedule their threads or pick
# their kernels: a result is only reproducible with them.
_THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES",
               "GOMP_SPINCOUNT", "GOMP_CPU_AFFINITY", "KMP_BLOCKTIME", "KMP_AFFINITY",
               "MKL_NUM_THREADS", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "LD_PRELOAD",
               "GRAPHOPT_NATIVE_SPIN_US", "GRAPHOPT_DISABLE_AVX512", "GRAPHOPT_DISABLE_AVX2",
               "GRAPHOPT_DISABLE_VNNI")


def threading_info() -> dict[str, Any]:
    """Thread settings of torch and graphopt's native runtime, and the environment variables
    that change them (only those set)."""
    import torch

    backend = "unknown"
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend:"):
            backend = line.split(":", 1)[1].strip()
    info: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel_backend": backend,
        "environment": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
    }
    try:
        from graphopt.compile import host_isa

        info["native_isa"] = host_isa()
    except Exception:  # the benchmark runs without the extension too
        info["native_isa"] = None
    return info


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "graphopt" not in out:
        import graphopt

        out["graphopt"] = graphopt.__version__
    return out


def _load_average() -> float | None:
    """1-minute load average: on shared machines, a load near the core count means noise."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def load_text(machine: dict[str, Any]) -> str:
    """'load 0.84, others 0.02 CPUs': the load average and what other processes used at the start."""
    text = f"load {machine.get('load_avg_1m')}"
    if machine.get("competing_cpus") is not None:
        text += f", others {machine['competing_cpus']} CPUs"
    return text


def _busy_jiffies() -> int | None:
    """Busy time of all CPUs so far (user, nice, system, irq, softirq, steal), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return user + nice + system + irq + softirq + steal


def competing_cpu_load(window_s: float = 0.5) -> float | None:
    """How many CPUs' worth of work *other* processes did over a short window, now.

    The load average is a poor judge at the start of a benchmark: it decays over a minute, so
    the benchmark's own previous model (or warm-up) counts as "other load". This samples the
    machine-wide busy time (``/proc/stat``, hypervisor steal included: on a shared VM that is
    competition too) and subtracts this process's own CPU time over ``window_s`` seconds.
    None where ``/proc/stat`` is unavailable.
    """
    busy0, own0, t0 = _busy_jiffies(), _own_cpu_seconds(), time.perf_counter()
    if busy0 is None:
        return None
    time.sleep(window_s)
    busy1, own1, t1 = _busy_jiffies(), _own_cpu_seconds(), time.perf_counter()
    if busy1 is None:
        return None
    others = (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - (own1 - own0)
    return round(max(others, 0.0) / (t1 - t0), 2)


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _total_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# The peak-RSS probe of a backend's setup is graphopt.stagereport's meter: stages measured
# inside it (trace, optimize with report=True) nest without hiding its peak.
MemoryProbe = PeakMeter
