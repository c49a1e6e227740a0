"""Text generation: a causal language model traced once into a decoder step graph with an
explicit KV cache (trace.py), compiled for any backend (runner.py) and run token by token
(generate.py, sampling.py); calibrate.py replays sequences as calibration data for quantizing
the step graph. The facades are ``graphopt.trace_decoder`` and ``graphopt.generate``.
"""

from graphopt.decoding.calibrate import calibration_steps
from graphopt.decoding.generate import generate, stream
from graphopt.decoding.runner import CompiledDecoder
from graphopt.decoding.sampling import SamplingConfig
from graphopt.decoding.trace import DecoderGraph, trace_decoder

__all__ = ["CompiledDecoder", "DecoderGraph", "SamplingConfig", "calibration_steps", "generate",
           "stream", "trace_decoder"]
