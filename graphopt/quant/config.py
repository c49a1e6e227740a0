"""``QuantizeConfig``: every option of ``graphopt.quantize``, checked once, printable, saved in
the ``QuantReport``. Calibration data is not an option: it stays an argument of ``quantize``."""

from __future__ import annotations

from dataclasses import dataclass, field

from graphopt.compile import Target
from graphopt.config import Config, string_tuple
from graphopt.errors import QuantizationError

MODES = ("dynamic", "static", "weight-only", "fp16", "bf16", "bf16-compute", "codebook", "auto")
# What mode="auto" chooses among per layer (besides float): the modes that can make a layer
# faster. fp16 / bf16 storage and codebooks shrink weights but compute in f32.
AUTO_MODES = ("dynamic", "static", "weight-only", "bf16-compute")
SENSITIVITIES = ("local", "end-to-end")
ROUNDINGS = ("nearest", "gptq")


@dataclass(frozen=True)
class QuantizeConfig(Config):
    """The options of :func:`graphopt.quantize` (see it for what each one does).

    ``target`` (a :class:`graphopt.Target`) is where the quantized graph will run: its
    ``backend`` must run every op the quantization makes (graphopt/quant/backend.py), its
    ``isa`` is checked against this machine and its ``threads`` run the calibration and
    sensitivity measurements.
    """

    mode: str = "dynamic"
    error_budget: float | None = None
    exclude: tuple[str, ...] = ()
    sensitivity: str = "local"
    observer: str = "minmax"
    observer_options: dict | None = field(default=None, hash=False)
    embeddings: bool = True
    convs: bool = False
    per_token: bool = False
    bits: int | None = None  # weight-only: 4 (or 8); codebook: 5 (fully connected layers)
    conv_bits: int = 8  # codebook: bits of convolution weights
    bias_bits: int | None = None  # codebook: share biases too, at this many bits
    block_size: int = 32
    act_bits: int = 0  # weight-only: 8 quantizes activations per block (int8 products)
    rounding: str = "nearest"  # weight-only: "gptq" compensates rounding errors (gptq.py)
    progress: bool | None = None
    speed: bool = False  # keep float the layers whose quantized form is not faster (speed.py)
    target: Target | None = None
    modes: tuple[str, ...] = ()  # mode="auto": the modes each layer chooses among (default all)

    _error = QuantizationError
    _entry = "graphopt.quantize"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise QuantizationError(f"unknown quantize mode {self.mode!r}; known: "
                                    f"{', '.join(MODES)}")
        self._set("exclude", _globs(self.exclude))
        self._check_bits()
        self._check_int("block_size", 1)
        self._check_int("act_bits", 0, allowed=(0, 8))
        if self.act_bits and self.mode != "weight-only":
            raise QuantizationError(f"act_bits applies to mode='weight-only', not to "
                                    f"mode='{self.mode}'")
        self._check_choice("rounding", ROUNDINGS)
        if self.rounding != "nearest" and self.mode != "weight-only":
            raise QuantizationError(f"rounding={self.rounding!r} applies to "
                                    f"mode='weight-only', not to mode='{self.mode}'")
        self._check_number("error_budget", 0.0, optional=True)
        self._check_choice("sensitivity", SENSITIVITIES)
        self._check_observer()
        for name in ("embeddings", "convs", "per_token", "speed"):
            self._check_bool(name)
        if self.progress is not None:
            self._check_bool("progress")
        if self.per_token and self.mode not in ("dynamic", "auto"):
            raise QuantizationError(f"per_token applies to mode='dynamic' (run-time activation "
                                    f"ranges), not to mode='{self.mode}'")
        self._check_modes()
        if self.target is not None and not isinstance(self.target, Target):
            self._fail("target", self.target, "a graphopt.Target or None")

    def _check_bits(self) -> None:
        if self.mode == "codebook":
            # Deep Compression's defaults: 5-bit codebooks for fully connected layers, 8-bit for
            # convolutions (index 0 is the pruned zero, so 8 bits take uint16 indices).
            self._set("bits", 5 if self.bits is None else self.bits)
            for name in ("bits", "conv_bits"):
                self._check_int(name, 1, allowed=tuple(range(1, 13)))
            if self.bias_bits is not None:
                self._check_int("bias_bits", 1, allowed=tuple(range(1, 13)))
            return
        if self.bias_bits is not None:
            raise QuantizationError(f"bias_bits applies to mode='codebook', not to "
                                    f"mode='{self.mode}'")
        self._set("bits", 4 if self.bits is None else self.bits)
        self._check_int("bits", 4, allowed=(4, 8))
        self._check_int("conv_bits", 1)

    def _check_modes(self) -> None:
        modes = string_tuple(self.modes, QuantizationError,
                             "graphopt.quantize: modes must be mode names")
        if modes and self.mode != "auto":
            raise QuantizationError(f"modes= applies to mode='auto' (each layer chooses among "
                                    f"them), not to mode='{self.mode}'")
        unknown = [m for m in modes if m not in AUTO_MODES]
        if unknown:
            raise QuantizationError(f"mode='auto' chooses among {', '.join(AUTO_MODES)}; got "
                                    f"{', '.join(map(repr, unknown))}")
        if self.mode == "auto":
            modes = tuple(dict.fromkeys(modes)) or AUTO_MODES
        self._set("modes", modes)

    def _check_observer(self) -> None:
        from graphopt.quant.observers import OBSERVERS

        if self.observer not in OBSERVERS:
            raise QuantizationError(f"unknown observer {self.observer!r}; known: "
                                    f"{', '.join(OBSERVERS)}")
        if self.observer_options is not None:
            if not isinstance(self.observer_options, dict):
                self._fail("observer_options", self.observer_options, "a dict or None")
            self._set("observer_options", dict(self.observer_options))


def _globs(exclude) -> tuple[str, ...]:
    return string_tuple(exclude, QuantizationError,
                        "graphopt.quantize: exclude must be glob strings")


__all__ = ["AUTO_MODES", "MODES", "ROUNDINGS", "SENSITIVITIES", "QuantizeConfig"]
