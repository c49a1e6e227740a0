"""The native runtime's thread pool (csrc/rt_threadpool.h), through its test hook.

Every chunk runs exactly once on any thread count, an exception in a chunk reaches the caller,
and each thread works through a contiguous home range: kernels order their chunks by image row,
so a thread keeps the same rows in every kernel of a plan (they stay in its own core's cache).
"""

from __future__ import annotations

import pytest

from graphopt import _extension

_C = _extension.load()


@pytest.mark.parametrize("threads", [2, 3, 4, 8])
@pytest.mark.parametrize("chunks", [2, 7, 64, 1000])
def test_every_chunk_runs_once(chunks, threads):
    for _ in range(3):
        who = _C._native_pool_probe(chunks, threads)
        assert len(who) == chunks and min(who) >= 0  # -1: a chunk that never ran


def test_more_chunks_than_one_range_word_holds():
    # Range words hold 22-bit indices: longer loops run as consecutive jobs.
    chunks = (1 << 22) + 3
    who = _C._native_pool_probe(chunks, 2)
    assert len(who) == chunks and min(who) >= 0


def test_exception_in_a_chunk_reaches_the_caller_and_the_pool_recovers():
    with pytest.raises(RuntimeError, match="chunk 5"):
        _C._native_pool_probe(16, 2, 0, 5)
    assert min(_C._native_pool_probe(16, 2)) >= 0


def test_single_thread_runs_everything_on_the_caller():
    assert _C._native_pool_probe(9, 1) == [0] * 9


def test_helpers_work_through_contiguous_home_ranges():
    # Two threads: the caller owns chunks [0, 8) and takes them front to back, the helper owns
    # [8, 16); whoever runs out steals from the back of the other's range. So the helper's chunks
    # are always one contiguous run (its own front part, then the caller's tail), never
    # interleaved with the caller's as a shared counter hands them out.
    joined = 0
    for _ in range(300):  # until the helper took part in 10 jobs (it may not get a core)
        who = _C._native_pool_probe(16, 2, 20_000)
        helper = [c for c, t in enumerate(who) if t != 0]
        if helper:
            joined += 1
            assert helper == list(range(helper[0], helper[-1] + 1)), who
            assert who[0] == 0 or helper[0] == 0, who
        if joined == 10:
            break
    if joined == 0:
        pytest.skip("the helper thread got no core during 300 jobs of 0.3 ms: another process "
                    "holds this machine's second CPU, so there is nothing to check")


@pytest.mark.parametrize("chunks,threads", [(-1, 2), (1 << 25, 2), (4, 0), (4, 2000)])
def test_probe_arguments_are_checked(chunks, threads):
    with pytest.raises(ValueError):
        _C._native_pool_probe(chunks, threads)


def test_plan_spin_is_checked_and_kept():
    plan = _C.NativePlan(2)
    assert plan.spin_us == -1  # the runtime default
    plan.spin_us = 20_000
    assert plan.spin_us == 20_000
    for bad in (-2, 1_000_001):
        with pytest.raises(ValueError, match="spin_us"):
            plan.spin_us = bad
    assert plan.spin_us == 20_000


def test_spin_us_option_reaches_the_plans():
    import torch

    import graphopt
    from graphopt.errors import GraphoptError

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    x = torch.randn(2, 64)
    graph = graphopt.trace(model, (x,))
    fn = graphopt.compile(graph, backend="native", threads=2, spin_us=30_000)
    torch.testing.assert_close(fn(x), model(x))
    assert fn.spin_us == 30_000
    assert all(seg.spin_us == 30_000 for seg in fn.plan._segments if hasattr(seg, "spin_us"))
    for bad in (-1, 2_000_000, 2.5, True, "50"):
        with pytest.raises(GraphoptError, match="spin_us"):
            graphopt.compile(graph, backend="native", threads=2, spin_us=bad)
