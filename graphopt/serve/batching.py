"""Dynamic batching: concurrent requests to one model stacked into one call.

Each served model has one ``Batcher``: a bounded asyncio queue and one worker task. The worker
takes the first waiting request, then keeps taking requests for up to ``max_delay_s`` (or until
``max_batch`` rows), stacks those whose inputs agree on everything but the batch dimension, runs
the model once in a worker thread and hands each request its rows of the outputs. A model
without a dynamic batch dimension (every input's first dim fixed) runs one request per call.

Why it pays: a batch-1 call leaves most of a GEMM's arithmetic units idle and pays the per-call
overhead (thread-pool wake-up, dispatch) once per request; stacking 8 requests runs one GEMM of
8 rows in little more time than one. Why it is bounded: an unbounded queue turns overload into
memory growth and ever longer latencies; a full queue answers at once (``QueueFull``: HTTP 503)
so that clients back off or go elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """The model's queue is at ``max_queue``: the request is refused (HTTP 503)."""


@dataclass
class Request:
    inputs: list[np.ndarray]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return int(self.inputs[0].shape[0]) if self.inputs and self.inputs[0].ndim else 1


class Batcher:
    """Stacks concurrent requests for ``run(inputs) -> outputs`` (lists of arrays, rows on
    axis 0 when ``batchable``). ``observe(batch_rows, queue_depth)`` is called per batch."""

    def __init__(self, run: Callable[[list[np.ndarray]], list[np.ndarray]], *,
                 batchable: bool, max_batch: int = 8, max_delay_s: float = 0.002,
                 max_queue: int = 256, observe: Callable[[int, int], None] | None = None):
        self.run, self.batchable = run, batchable
        self.max_batch = max_batch if batchable else 1
        self.max_delay_s, self.max_queue = max_delay_s, max_queue
        self.observe = observe or (lambda rows, depth: None)
        self.queue: asyncio.Queue[Request] | None = None
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        """Finish what is queued, then stop (graceful shutdown)."""
        if self.queue is not None:
            await self.queue.join()
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass

    @property
    def depth(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def submit(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs for ``inputs`` (one request); ``QueueFull`` when the queue is
        at ``max_queue``."""
        request = Request(inputs, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            raise QueueFull(f"{self.max_queue} requests are waiting") from None
        return await request.future

    async def _work(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.max_delay_s
            while sum(r.rows for r in batch) < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                for group in _compatible_groups(batch, self.max_batch):
                    await self._run_group(group)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _run_group(self, group: list[Request]) -> None:
        self.observe(sum(r.rows for r in group), self.depth)
        stacked = group[0].inputs if len(group) == 1 else [
            np.concatenate([r.inputs[i] for r in group]) for i in range(len(group[0].inputs))]
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(None, self.run, stacked)
        except Exception as exc:  # the model failed: every request of the call learns why
            for r in group:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        start = 0
        for r in group:
            rows = r.rows
            part = outputs if len(group) == 1 else [o[start:start + rows] for o in outputs]
            start += rows
            if not r.future.done():  # (a client that went away cancelled its future)
                r.future.set_result(part)


def _compatible_groups(batch: list[Request], max_rows: int) -> list[list[Request]]:
    """``batch`` split into runs that can be stacked: same dtypes and the same shapes but for
    axis 0, at most ``max_rows`` rows each, in arrival order."""
    groups: list[list[Request]] = []
    for r in batch:
        key = [(a.dtype, a.shape[1:]) for a in r.inputs]
        last = groups[-1] if groups else None
        if (last is not None and [(a.dtype, a.shape[1:]) for a in last[0].inputs] == key
                and sum(x.rows for x in last) + r.rows <= max_rows
                and all(a.ndim for a in r.inputs)):
            last.append(r)
        else:
            groups.append([r])
    return groups
