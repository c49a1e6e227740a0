"""Backends that lower graphopt graphs: torch modules (``torch_module``), later ONNX and native."""
