"""What ``graphopt.quantize`` did: one record per candidate layer, the error, the sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LayerRecord:
    """One candidate layer: its node, weight, sensitivity and the decision."""

    node: str
    weight: str
    shape: tuple[int, ...]
    quantized: bool
    sensitivity: float | None = None
    reason: str = ""
    cost: tuple[float, float] | None = None  # speed=True: (float, quantized) ms alone
    mode: str = ""  # mode="auto": the mode the layer was quantized in


@dataclass
class QuantReport:
    """What ``quantize`` did, for every mode: per-layer records, final error vs budget, size.

    Attributes:
        mode: the mode with its main options (``"static minmax"``, ``"weight-only int4/32"``).
        label: what a quantized layer became (``int8``, ``int4``, ``fp16``...), for printing.
        error: mean ``1 - cosine`` of float vs quantized outputs over the calibration inputs.
        config: the run's options (``QuantizeConfig.to_dict()``).
    """

    mode: str
    layers: list[LayerRecord] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    error: float | None = None
    error_budget: float | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    label: str = "int8"
    config: dict = field(default_factory=dict)  # QuantizeConfig.to_dict() of the run
    stage: Any = None  # the run's StageReport (time, peak memory; graphopt.stagereport)
    speed: dict = field(default_factory=dict)  # speed=True: candidate -> median ms per call
    notes: list[str] = field(default_factory=list)  # what the run left out, and why
    attention: str = "fp32"  # "bf16": attention nodes became attention_bf16 (within budget)

    @property
    def quantized(self) -> list[str]:
        return [r.node for r in self.layers if r.quantized]

    @property
    def fallback(self) -> list[str]:
        return [r.node for r in self.layers if not r.quantized]

    def __str__(self) -> str:
        lines = [
            f"quantize mode={self.mode}: {len(self.quantized)}/{len(self.layers)} layers "
            f"{self.label}, weights {self.bytes_before / 1e6:.2f} MB -> "
            f"{self.bytes_after / 1e6:.2f} MB"
            + (f", error {self.error:.2e}" if self.error is not None else "")
            + (f" (budget {self.error_budget:.2e})" if self.error_budget is not None else "")
            + f", {self.seconds:.1f} s"
        ]
        if self.embeddings:
            lines.append(f"  int8 embedding tables (weight-only): {', '.join(self.embeddings)}")
        width = max([len(self.label), 5] + [len(r.mode) for r in self.layers])
        for r in self.layers:
            sens = "" if r.sensitivity is None else f" sensitivity={r.sensitivity:.2e}"
            if r.cost is not None:
                sens += (f" alone: float {r.cost[0]:.4f} ms, {r.mode or self.label} "
                         f"{r.cost[1]:.4f} ms")
            state = (r.mode or self.label) if r.quantized else "float"
            lines.append(f"  {state:<{width}} {r.node} ({r.weight} {list(r.shape)}){sens}  "
                         f"{r.reason}".rstrip())
        if self.speed:
            lines.append("  speed (median ms per call): " + ", ".join(
                f"{label} {ms:.3f}" for label, ms in self.speed.items()))
        lines += [f"  note: {note}" for note in self.notes]
        if self.stage is not None:
            lines.append(f"  {self.stage}")
        return "\n".join(lines)
