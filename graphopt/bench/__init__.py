"""The benchmark harness: ``graphopt.benchmark`` and its report.

Modules:
    harness    benchmark(): setup, first call, warm-up, interleaved timed rounds
    config     BenchmarkConfig: benchmark()'s options, checked once, saved in the report
    backends   the backends (eager, torch-compile, onnxruntime, graphopt-onnxruntime,
               graphopt-native, graphopt-torch) and @bench_backend to add one
    timing     calibrate(), run_interleaved(), progress bars
    per_pass   attribute_passes(): speedup per pass from timed pipeline prefixes
    report     BenchmarkReport / BackendResult / LatencyStats; JSON, markdown, terminal table
    plot       plot_report(), plot_summary() (matplotlib)
    machine    machine_info(), MemoryProbe

::

    report = graphopt.benchmark(model, (x,), backends=["eager", "onnxruntime",
                                                       "graphopt-onnxruntime"], threads=2)
    print(report)
    report.to_json("out.json"); report.to_markdown("out.md"); report.plot("out.png")
"""

from graphopt.bench.backends import (
    BENCH_BACKENDS,
    DEFAULT_BACKENDS,
    BackendUnavailable,
    BenchBackend,
    Prepared,
    Subject,
    bench_backend,
)
from graphopt.bench.config import BenchmarkConfig, BenchmarkConfigError
from graphopt.bench.harness import benchmark, benchmark_with_config
from graphopt.bench.per_pass import attribute_passes
from graphopt.bench.report import (
    SCHEMA,
    BackendResult,
    BenchmarkReport,
    LatencyStats,
    PassStage,
    PerPassReport,
)

__all__ = [
    "BENCH_BACKENDS", "DEFAULT_BACKENDS", "SCHEMA", "BackendResult", "BackendUnavailable",
    "BenchBackend", "BenchmarkConfig", "BenchmarkConfigError", "BenchmarkReport", "LatencyStats",
    "PassStage", "PerPassReport", "Prepared",
    "Subject", "attribute_passes", "bench_backend", "benchmark", "benchmark_with_config",
]
