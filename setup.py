"""Build script for graphopt: package layout and the graphopt._C pybind11 extension.

Project metadata lives in pyproject.toml; this file holds what must be computed:

* Packages. ``graphopt`` and its subpackages come from ``graphopt/``; the top-level ``passes/``
  directory is installed as ``graphopt.passes`` through ``package_dir``.
* The native extension ``graphopt._C`` built from ``csrc/*.cpp``. It is compiled for the baseline
  x86-64 ISA (no ``-march=native``): AVX2/FMA kernels carry per-function target attributes and
  are picked at run time, so one binary runs on every x86-64 CPU.

Environment:
    GRAPHOPT_ASAN=1        build with AddressSanitizer + UndefinedBehaviorSanitizer (``make asan``;
                           a UB finding aborts: -fno-sanitize-recover).
    GRAPHOPT_TSAN=1        build with ThreadSanitizer (``make tsan``).
    GRAPHOPT_BUILD_JOBS=N  parallel compile jobs (default 2).
"""

from __future__ import annotations

import glob
import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _packages() -> tuple[list[str], dict[str, str]]:
    """Returns (packages, package_dir) with passes/ mapped to graphopt.passes."""
    packages = ["graphopt"]
    packages += [f"graphopt.{p}" for p in find_packages(os.path.join(ROOT, "graphopt"))]
    package_dir = {"graphopt": "graphopt"}
    if os.path.isdir(os.path.join(ROOT, "passes")):
        packages.append("graphopt.passes")
        packages += [f"graphopt.passes.{p}" for p in find_packages(os.path.join(ROOT, "passes"))]
        package_dir["graphopt.passes"] = "passes"
    return packages, package_dir


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _extension() -> Pybind11Extension:
    sources = sorted(glob.glob("csrc/*.cpp"))
    headers = sorted(glob.glob("csrc/*.h"))
    compile_args = ["-fopenmp", "-Wall", "-Wextra"]
    link_args = ["-fopenmp"]
    if _flag("GRAPHOPT_ASAN") and _flag("GRAPHOPT_TSAN"):
        raise SystemExit("GRAPHOPT_ASAN and GRAPHOPT_TSAN cannot be combined")
    if _flag("GRAPHOPT_ASAN"):
        # -O1 -g keeps reports readable; the kernels' semantics do not change. UBSan findings
        # (misaligned or null access, bad shifts, invalid bool / enum loads...) abort instead of
        # printing and going on, so a finding fails the test run. Signed overflow is not one:
        # Python's CFLAGS carry -fwrapv, which defines it (as the normal build does).
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
               "-fno-omit-frame-pointer"]
        compile_args += san + ["-O1", "-g"]
        link_args += san
    elif _flag("GRAPHOPT_TSAN"):
        san = ["-fsanitize=thread", "-fno-omit-frame-pointer"]
        compile_args += san + ["-O1", "-g"]
        link_args += san
    else:
        compile_args += ["-O3"]
    return Pybind11Extension(
        "graphopt._C",
        sources,
        depends=headers,  # build_ext rebuilds when a header is newer than the .so
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=["gomp"],
    )


# Compile the csrc/ files in parallel (setuptools compiles one at a time otherwise).
ParallelCompile("GRAPHOPT_BUILD_JOBS", default=2).install()

PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=[_extension()],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
