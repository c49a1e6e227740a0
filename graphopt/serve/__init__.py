"""Serving model directories over HTTP (KServe v2 / Triton protocol), with dynamic batching
and Prometheus metrics: ``graphopt serve DIR``. Needs the ``[serve]`` extra (FastAPI, uvicorn,
prometheus-client); ``import graphopt`` never imports this package."""

from graphopt.serve.app import ServedModel, create_app, load_model

__all__ = ["ServedModel", "create_app", "load_model"]
