# graphopt developer targets. Everything runs inside the repo-local virtualenv .venv.
#
#   make venv        create .venv (if missing), editable-install graphopt[test,serve,tune], build graphopt._C
#   make test        venv + rebuild graphopt._C if csrc/ changed + lint-imports + pytest
#   make demo        venv + python -m graphopt.demo
#   make asan        native kernel + model tests against an ASan+UBSan build of graphopt._C
#   make tsan        thread-pool / concurrent-call tests against a ThreadSanitizer build
#   make fuzz        each fuzz harness (fuzz/fuzz_*.py) with atheris, FUZZ_TIME seconds each
#                    (default 60); FUZZ_ARGS="--runs 1000000" for a fixed execution count
#   make bench-gemm  SGEMM GFLOP/s vs torch.mm (BENCH_ARGS="--threads 1 --quick" to pass flags)
#   make clean       remove build outputs (keeps .venv)
#
# Editable install mode: setuptools "lenient" (its PEP 660 default), spelled out so it cannot
# silently change. passes/ is mapped to graphopt.passes through package_dir, which lenient mode
# serves with an import finder (site-packages/__editable___graphopt_*_finder.py) reading the
# repo in place; new files under graphopt/ or passes/ need no reinstall. "compat" mode only puts
# the repo root on sys.path, so `import graphopt.passes` fails there; "strict" mode serves a
# link tree under build/ that misses files added after install. Both were tried and rejected.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EDITABLE_MODE := lenient

# The extension file name depends on the interpreter (e.g. _C.cpython-311-x86_64-linux-gnu.so).
EXT_SUFFIX := $(shell if [ -x $(PY) ]; then $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'; else $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'; fi)
EXT := graphopt/_C$(EXT_SUFFIX)
CSRC := $(wildcard csrc/*.cpp csrc/*.h)
# libstdc++ is preloaded with libasan: python does not link it, and ASan's __cxa_throw interceptor
# must find the real one at start-up or the first C++ exception aborts the process.
ASAN_PRELOAD := $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)
TSAN_PRELOAD := $(shell gcc -print-file-name=libtsan.so)
# The native suite: kernels (one op per plan), models (whole plans), the safety tests.
ASAN_TESTS := tests/test_native_gemm.py tests/test_native_kernels.py tests/test_native_elementwise.py \
	tests/test_native_indexing.py tests/test_native_plan.py tests/test_sparse_gemm.py \
	tests/test_native_sparse.py tests/test_native_qgemm.py tests/test_native_quant_static.py \
	tests/test_native_models.py tests/test_native_quant_models.py tests/test_native_safety.py \
	tests/test_native_artifacts.py tests/test_native_kernel_table.py \
	tests/test_native_activation_extremes.py tests/test_native_blocked.py tests/test_native_winograd.py \
	tests/test_native_onnx_ops.py tests/test_native_half.py tests/test_native_bf16.py \
	tests/test_shared_weights.py tests/test_native_wide.py tests/test_native_schema_ops.py \
	tests/test_native_codebook.py tests/test_codec.py tests/test_quant_weight_only.py \
	tests/test_native_kv_attention.py tests/test_native_gelu.py tests/test_quant_bf16_attention.py \
	tests/test_native_threadpool.py
# Tests that run native code on several threads at once (the runtime's pool, concurrent calls).
TSAN_TESTS := tests/test_native_safety.py tests/test_native_artifacts.py \
	tests/test_native_models.py::test_threads_do_not_change_results tests/test_native_threadpool.py

.PHONY: venv test demo asan tsan fuzz bench-gemm clean

venv: $(STAMP) $(EXT)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the packaging metadata changes. The build requirements are installed into
# the venv and the install runs without build isolation: no throw-away build env per install,
# and the same setuptools/pybind11 later serve `setup.py build_ext` below.
$(STAMP): pyproject.toml setup.py | $(PY)
	$(PY) -m pip install "setuptools>=64" wheel "pybind11>=2.10"
	$(PY) -m pip install --no-build-isolation --config-settings editable_mode=$(EDITABLE_MODE) -e ".[test,serve,tune]"
	touch $@

# The editable install builds graphopt._C in place once; after that, edits under csrc/ rebuild it
# here (setuptools skips the build when the .so is already newer than every source and header).
$(EXT): $(CSRC) setup.py | $(STAMP)
	$(PY) setup.py build_ext --inplace
	touch $@

# lint-imports checks the layer contract in pyproject.toml (docs/architecture.md); it must run
# from the repository root, where it finds passes/ as its own root package.
test: venv
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -ra tests

demo: venv
	$(PY) -m graphopt.demo

# Build the extension with ASan + UBSan in place, run the native suite with libasan preloaded
# (python itself is not instrumented), then rebuild the normal extension. The trap rebuilds it
# even when the tests fail or are interrupted, so a later `make test` never loads the ASan build
# without its runtime. detect_leaks=0: CPython and torch keep allocations alive until exit.
# UBSan aborts on its first finding (-fno-sanitize-recover, halt_on_error). Python's own CFLAGS
# carry -fwrapv, so signed overflow is defined behaviour there and not reported.
# GRAPHOPT_NATIVE_SEPARATE_BUFFERS=1: each buffer of a native plan gets its own allocation, so
# ASan also sees overruns between buffers that would share the runtime's arena.
asan: venv
	@set -euo pipefail; \
	mkdir -p build; \
	trap '$(PY) setup.py build_ext --inplace --force > build/normal-rebuild.log 2>&1 \
		|| { cat build/normal-rebuild.log; exit 1; }' EXIT; \
	GRAPHOPT_ASAN=1 $(PY) setup.py build_ext --inplace --force \
		--build-temp build/asan-temp --build-lib build/asan-lib > build/asan-build.log 2>&1 \
		|| { cat build/asan-build.log; exit 1; }; \
	LD_PRELOAD="$(ASAN_PRELOAD)" ASAN_OPTIONS=detect_leaks=0 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 GRAPHOPT_NATIVE_SEPARATE_BUFFERS=1 \
		$(PY) -m pytest -q -ra -p no:cacheprovider $(ASAN_TESTS)

# The same with ThreadSanitizer: the runtime's thread pool, plans run with several native
# threads, one module called from several Python threads. csrc/tsan.supp silences reports whose
# stacks lie in uninstrumented third-party code only, never graphopt's. OMP_NUM_THREADS=1 keeps
# torch's eager references (and sgemm's default) off OpenMP teams, whose libgomp barriers TSan
# cannot see; the native runtime's own pool does not use OpenMP.
tsan: venv
	@set -euo pipefail; \
	mkdir -p build; \
	trap '$(PY) setup.py build_ext --inplace --force > build/normal-rebuild.log 2>&1 \
		|| { cat build/normal-rebuild.log; exit 1; }' EXIT; \
	GRAPHOPT_TSAN=1 $(PY) setup.py build_ext --inplace --force \
		--build-temp build/tsan-temp --build-lib build/tsan-lib > build/tsan-build.log 2>&1 \
		|| { cat build/tsan-build.log; exit 1; }; \
	LD_PRELOAD="$(TSAN_PRELOAD)" OMP_NUM_THREADS=1 \
		TSAN_OPTIONS="suppressions=$(CURDIR)/csrc/tsan.supp halt_on_error=1 second_deadlock_stack=1" \
		$(PY) -m pytest -q -ra -p no:cacheprovider $(TSAN_TESTS)

# Coverage-guided fuzzing (atheris, from the [fuzz] extra) of the IR parser, the ONNX importer,
# the native artifact loader and the torch bundle loader; seeds in fuzz/corpus/<target>/, new
# corpus entries in build/fuzz/<target>/, findings in build/fuzz/findings/<target>/.
FUZZ_TIME ?= 60
fuzz: venv
	$(PY) -m pip install -q atheris  # the [fuzz] extra (no reinstall of graphopt itself)
	$(PY) fuzz/run.py all --time $(FUZZ_TIME) $(FUZZ_ARGS)

bench-gemm: venv
	$(PY) benchmarks/bench_gemm.py $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info graphopt/_C*.so
