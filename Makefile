# graphopt developer targets. Everything runs inside the repo-local virtualenv .venv.
#
#   make venv        create .venv (if missing), editable-install graphopt[test], build graphopt._C
#   make test        venv + rebuild graphopt._C if csrc/ changed + pytest
#   make demo        venv + python -m graphopt.demo
#   make asan        native kernel tests against an AddressSanitizer build of graphopt._C
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

.PHONY: venv test demo asan bench-gemm clean

venv: $(STAMP) $(EXT)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the packaging metadata changes. The build requirements are installed into
# the venv and the install runs without build isolation: no throw-away build env per install,
# and the same setuptools/pybind11 later serve `setup.py build_ext` below.
$(STAMP): pyproject.toml setup.py | $(PY)
	$(PY) -m pip install "setuptools>=64" wheel "pybind11>=2.10"
	$(PY) -m pip install --no-build-isolation --config-settings editable_mode=$(EDITABLE_MODE) -e ".[test]"
	touch $@

# The editable install builds graphopt._C in place once; after that, edits under csrc/ rebuild it
# here (setuptools skips the build when the .so is already newer than every source and header).
$(EXT): $(CSRC) setup.py | $(STAMP)
	$(PY) setup.py build_ext --inplace
	touch $@

test: venv
	$(PY) -m pytest -q -ra tests

demo: venv
	$(PY) -m graphopt.demo

# Build the extension with ASan in place, run the native kernel tests with libasan preloaded
# (python itself is not instrumented), then rebuild the normal extension. The trap rebuilds it even
# when the tests fail or are interrupted, so a later `make test` never loads the ASan build
# without its runtime. detect_leaks=0: CPython and torch keep allocations alive until exit.
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
	LD_PRELOAD="$(ASAN_PRELOAD)" ASAN_OPTIONS=detect_leaks=0 GRAPHOPT_NATIVE_SEPARATE_BUFFERS=1 \
		$(PY) -m pytest -q -ra -p no:cacheprovider tests/test_native_gemm.py \
		tests/test_native_kernels.py tests/test_native_indexing.py tests/test_native_plan.py tests/test_sparse_gemm.py \
		tests/test_native_sparse.py tests/test_native_qgemm.py tests/test_native_quant_static.py

bench-gemm: venv
	$(PY) benchmarks/bench_gemm.py $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info graphopt/_C*.so
