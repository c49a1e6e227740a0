"""The package version, in a module of its own so that any layer can read it without importing
the facade ``graphopt/__init__.py`` (e.g. the ONNX exporter's ``producer_version``).

Keep it equal to ``[project] version`` in pyproject.toml.
"""

__version__ = "0.1.0"
