"""Text generation: a causal language model traced once into a decoder step graph with an
explicit KV cache (trace.py), compiled for any backend (runner.py) and run token by token
(generate.py, sampling.py); calibrate.py replays sequences as calibration data for quantizing
the step graph; directory.py saves a traced decoder as a decoder directory and loads it back.
The facades are ``graphopt.trace_decoder``, ``graphopt.generate`` and, for decoders,
``graphopt.save`` / ``graphopt.load``.
"""

from graphopt.decoding.calibrate import calibration_steps
from graphopt.decoding.directory import load_decoder, save_decoder
from graphopt.decoding.generate import generate, stream
from graphopt.decoding.runner import CompiledDecoder
from graphopt.decoding.sampling import SamplingConfig
from graphopt.decoding.trace import DecoderGraph, trace_decoder

__all__ = ["CompiledDecoder", "DecoderGraph", "SamplingConfig", "calibration_steps", "generate",
           "load_decoder", "save_decoder", "stream", "trace_decoder"]
