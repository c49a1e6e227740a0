"""graphopt's native runtime: graphs compiled to execution plans that C++ kernels run.

``graphopt.compile(graph, backend="native")`` returns a :class:`NativeModule`. The pieces:

* ``builder``  graph -> steps: lowering through the op registry (``lower/``), views without
  copies, in-place reuse, plan-time constant folding, reference fallback;
* ``memory``   liveness-based arena planning (greedy best-fit by size, 64-byte aligned);
* ``plan``     the ExecutionPlan and its Device (CPU; the seam for CUDA);
* ``module``   the callable: input checks, per-shape plan cache, output tensors;
* ``artifact`` ``NativeModule.save`` / ``load``: the optimized graph and its weights in one file;
* ``codes``    integer codes shared with the C++ kernels (csrc/rt_*.cpp);
* ``errors``   the runtime's errors (NativeError, NativeIndexError): what graphopt._C raises.
"""

from graphopt.native.artifact import load
from graphopt.native.builder import NativeFallbackWarning, NativeUnsupportedError, PlanBuilder
from graphopt.native.errors import NativeError, NativeIndexError
from graphopt.native.memory import Lifetime, MemoryPlan, check_plan, plan_memory
from graphopt.native.module import NativeModule
from graphopt.native.plan import CPU, CpuDevice, Device, ExecutionPlan

__all__ = [
    "CPU", "CpuDevice", "Device", "ExecutionPlan", "Lifetime", "MemoryPlan", "NativeError",
    "NativeFallbackWarning", "NativeIndexError", "NativeModule", "NativeUnsupportedError",
    "PlanBuilder", "check_plan", "load", "plan_memory",
]
