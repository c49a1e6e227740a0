"""``graphopt serve DIR [DIR...] --port 8000``: model directories over HTTP (KServe v2)."""

from __future__ import annotations

import argparse
import os

from graphopt.cli._common import CliError, add_target_arguments, paragraph


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "serve", parents=[common], help="serve model directories over HTTP (KServe v2 / Triton)",
        description=paragraph(
            "Load each model directory (graphopt.save, or graphopt optimize -o DIR), compile it "
            "for --backend and serve it with the KServe v2 / Triton inference protocol: POST "
            "/v2/models/NAME/infer (NAME: the directory's name), model metadata, "
            "/v2/health/live|ready and Prometheus /metrics. Concurrent requests are stacked "
            "into one call (dynamic batching: --max-batch rows, waiting at most "
            "--max-delay-ms) where the model has a dynamic batch dim; a full queue answers "
            "503. Needs the [serve] extra (pip install 'graphopt[serve]')."),
        epilog="examples:\n"
        "  graphopt optimize zoo:mlp -o mlp/ && graphopt serve mlp --port 8000\n"
        "  curl localhost:8000/v2/models/mlp\n"
        "  graphopt serve minilm bert --backend onnxruntime --max-batch 16 --input-stats",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="DIR", help="model directories to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--backend", choices=("native", "onnxruntime", "interpreter"),
                   default="native", help="what runs the models (default: %(default)s)")
    add_target_arguments(p, "intra-op threads of each model")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="rows stacked into one call (1: no batching; default: %(default)s)")
    p.add_argument("--max-delay-ms", type=float, default=2.0, metavar="MS",
                   help="longest a request waits for others to stack with (default: "
                   "%(default)s)")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests waiting per model before new ones get 503 (default: "
                   "%(default)s)")
    p.add_argument("--max-body-mb", type=float, default=64.0, metavar="MB",
                   help="largest request body (default: %(default)s)")
    p.add_argument("--input-stats", action="store_true",
                   help="export per-input mean/std/min/max over the last 100 requests")
    p.set_defaults(run=run)


def run(opts) -> int:
    try:
        import uvicorn

        from graphopt.serve import create_app, load_model
    except ImportError as exc:
        raise CliError(f"graphopt serve needs the [serve] extra ({exc.name} is missing): "
                       "pip install 'graphopt[serve]'", code=1) from None
    for name, value, low in (("--max-batch", opts.max_batch, 1), ("--max-queue",
                                                                   opts.max_queue, 1),
                             ("--port", opts.port, 0)):
        if value < low:
            raise CliError(f"{name} {value}: expected an integer >= {low}")
    if not opts.max_delay_ms >= 0 or not opts.max_body_mb > 0:
        raise CliError("--max-delay-ms must be >= 0 and --max-body-mb > 0")
    for folder in opts.models:
        if not os.path.isdir(folder):
            raise CliError(f"{folder}: not a directory (serve takes model directories: "
                           "graphopt optimize MODEL -o DIR/)")
    models = [load_model(folder, backend=opts.backend, threads=opts.threads)
              for folder in opts.models]
    app = create_app(models, max_batch=opts.max_batch, max_delay_ms=opts.max_delay_ms,
                     max_queue=opts.max_queue, max_body_bytes=int(opts.max_body_mb * (1 << 20)),
                     input_stats=opts.input_stats)
    print(f"serving {', '.join(m.name for m in models)} on http://{opts.host}:{opts.port} "
          f"({opts.backend}; batching {'on' if opts.max_batch > 1 else 'off'})", flush=True)
    uvicorn.run(app, host=opts.host, port=opts.port, log_level="warning",
                timeout_graceful_shutdown=30)
    return 0
