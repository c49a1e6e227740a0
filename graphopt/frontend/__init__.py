"""Frontends: turn models into graphopt IR."""

from graphopt.frontend.torch_export import import_exported_program, trace

__all__ = ["import_exported_program", "trace"]
