"""Pass infrastructure: registration, pipelines, the pass manager, instruments, bisect.

Modules:
    registry     @register_pass, typed options, the pass registry
    pipeline     pipeline text syntax, Pipeline, PIPELINES (named pipelines)
    manager      PassManager, optimize
    instruments  Verify/Timing/NodeCount/PrintIR/DumpIR/NumericCheck instruments
    report       PassRecord, PassReport
    bisect       bisect, BisectResult
    numeric      output comparison shared by the numeric instrument and bisect

See docs/writing-a-pass.md.
"""

from graphopt.transform.bisect import BisectResult, bisect
from graphopt.transform.instruments import (
    DumpIRInstrument,
    Instrument,
    NodeCountInstrument,
    NumericCheckInstrument,
    PrintIRInstrument,
    StopPipeline,
    TimingInstrument,
    VerifyInstrument,
)
from graphopt.transform.manager import PassManager, optimize, verify_by_default
from graphopt.transform.pipeline import (
    PIPELINES,
    Fixpoint,
    PassStep,
    Pipeline,
    Repeat,
    parse_pipeline,
)
from graphopt.transform.registry import (
    FunctionPass,
    PassInfo,
    all_passes,
    create_pass,
    get_pass_info,
    load_pass_library,
    register_pass,
)
from graphopt.transform.report import PassRecord, PassReport

__all__ = [
    "PIPELINES",
    "BisectResult",
    "DumpIRInstrument",
    "Fixpoint",
    "FunctionPass",
    "Instrument",
    "NodeCountInstrument",
    "NumericCheckInstrument",
    "PassInfo",
    "PassManager",
    "PassRecord",
    "PassReport",
    "PassStep",
    "Pipeline",
    "PrintIRInstrument",
    "Repeat",
    "StopPipeline",
    "TimingInstrument",
    "VerifyInstrument",
    "all_passes",
    "bisect",
    "create_pass",
    "get_pass_info",
    "load_pass_library",
    "optimize",
    "parse_pipeline",
    "register_pass",
    "verify_by_default",
]
