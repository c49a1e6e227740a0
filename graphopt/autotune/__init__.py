"""Automatic optimization: ``graphopt.tune`` searches pass pipelines, pruning and quantization
against an accuracy goal, on Optuna (the ``[tune]`` extra). See graphopt/autotune/study.py."""

from graphopt.autotune.space import DEFAULT_SPACE, TuneSpaceError
from graphopt.autotune.study import TuneResult, tune

__all__ = ["DEFAULT_SPACE", "TuneResult", "TuneSpaceError", "tune"]
