"""Rewrite accounting shared by every pass: a per-pass log, a rewrite budget, the current node.

Every individual rewrite a pass performs (a rule application, a CSE merge, a folded node) asks
``allow_rewrite(rule, node)`` first: the rule driver does it for pattern rules, and
``Rewriter.edit(rule, node)`` for passes that walk the graph themselves. Outside a pass manager
that is a no-op that always says yes. Inside one, the pass manager opens a :class:`RewriteLog`
around each pass (``track_rewrites``):

* the log counts rewrites per rule, which the pass report prints;
* a budget (``max_rewrites=k``) makes ``allow_rewrite`` say no after ``k`` rewrites, which is how
  ``graphopt.bisect`` replays a pass up to its k-th rewrite to find the first one that breaks
  numerics;
* ``failed_node`` names the node being rewritten when a rule raised, for the error message.

Passes that rewrite without asking ``allow_rewrite`` still work; they just cannot be bisected
below the pass level.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from graphopt.ir.graph import Node


@dataclass
class RewriteEvent:
    """One rewrite: which rule did it and the node (``%name = op``) it rewrote."""

    rule: str
    node: str


@dataclass
class RewriteLog:
    """What the rewrites of one pass run did; see the module docstring."""

    max_rewrites: int | None = None
    events: list[RewriteEvent] = field(default_factory=list)
    denied: int = 0
    failed_node: str | None = None  # the node being rewritten when the pass raised

    @property
    def count(self) -> int:
        return len(self.events)

    @property
    def exhausted(self) -> bool:
        return self.max_rewrites is not None and self.count >= self.max_rewrites

    def per_rule(self) -> Counter:
        return Counter(e.rule for e in self.events)


_ACTIVE: contextvars.ContextVar[RewriteLog | None] = contextvars.ContextVar(
    "graphopt_rewrite_log", default=None
)


@contextlib.contextmanager
def track_rewrites(max_rewrites: int | None = None) -> Iterator[RewriteLog]:
    """Collect the rewrites done inside this block (and stop after ``max_rewrites``)."""
    log = RewriteLog(max_rewrites=max_rewrites)
    token = _ACTIVE.set(log)
    try:
        yield log
    finally:
        _ACTIVE.reset(token)


def active_log() -> RewriteLog | None:
    return _ACTIVE.get()


def allow_rewrite(rule: str, node: Node | str) -> bool:
    """Ask before one rewrite of ``node`` by ``rule``; False means "budget spent, stop rewriting".

    A pass must treat False as "leave the graph as it is from here on" (it may still return True
    for the rewrites it already did).
    """
    log = _ACTIVE.get()
    if log is None:
        return True
    if log.exhausted:
        log.denied += 1
        return False
    log.events.append(RewriteEvent(rule, node if isinstance(node, str) else node.describe()))
    return True


def budget_exhausted() -> bool:
    """True when the active budget allows no more rewrites (lets passes stop early)."""
    log = _ACTIVE.get()
    return log is not None and log.exhausted


@contextlib.contextmanager
def rewriting(node: Node) -> Iterator[None]:
    """Mark ``node`` as the one being rewritten, so that errors raised inside can name it."""
    try:
        yield
    except BaseException:
        log = _ACTIVE.get()
        if log is not None and log.failed_node is None:
            log.failed_node = node.describe()
        raise
