"""prune-channels: structured pruning, removing whole channels / attention heads / conv groups.

Before -> after (``prune-channels{ratio=0.5}``; the add ties both convs' output channels)::

    graph main(%x: f32[1, 3, 8, 8]) {                 graph main(%x: f32[1, 3, 8, 8]) {
      const %w1: f32[4, 3, 1, 1]                        const %w1: f32[2, 3, 1, 1]
      const %w2: f32[4, 4, 1, 1]                        const %w2: f32[2, 2, 1, 1]
      const %w3: f32[5, 4, 1, 1]                        const %w3: f32[5, 2, 1, 1]
      %a: f32[1, 4, 8, 8] = conv(%x, %w1, None)         %a: f32[1, 2, 8, 8] = conv(%x, %w1, None)
      %b: f32[1, 4, 8, 8] = conv(%a, %w2, None)         %b: f32[1, 2, 8, 8] = conv(%a, %w2, None)
      %c: f32[1, 4, 8, 8] = add(%a, %b)                 %c: f32[1, 2, 8, 8] = add(%a, %b)
      %y: f32[1, 5, 8, 8] = conv(%c, %w3, None)         %y: f32[1, 5, 8, 8] = conv(%c, %w3, None)
      return %y                                         return %y
    }                                                 }

Why the result is a valid graph: ``graphopt.prune.dependency`` groups every dim coupled to a
channel (through adds, concat/split, reshapes, depthwise/grouped convs, norms, attention heads)
and the channel is removed from all of them at once, with shape attributes rewritten; groups
touching a graph input/output or an op without a pruning rule are left alone. It is *not*
numerically exact (that is the point: the dropped channels were the least important); recover
accuracy with ``graphopt.finetune``. Options: ``ratio`` (fraction of each group's channels) or
``flops`` (fraction of the graph's FLOPs to remove), ``importance`` (l1, l2, bn; taylor needs
data: use ``graphopt.prune``), ``exclude`` (globs of constant names), ``max_ratio``,
``round_to`` (keep multiples of it, e.g. 8, in groups of at least 4x as many channels),
``scope`` (``layer``: the same ratio in every group; ``global``: all groups' channels ranked
together by normalized importance and removed from the weakest until the target holds, each
group keeping at least ``1 - max_ratio``: ``prune-channels{flops=0.5,scope=global}``).
Removing one group's channels (from its producers and all their consumers) is one rewrite
(``prune-channel-group``) through the rewriter's edit API, so ``graphopt.bisect`` can stop after
any one group.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from graphopt.errors import PassOptionError
from graphopt.ir.graph import Graph
from graphopt.transform.registry import register_pass


@register_pass("prune-channels")
class PruneChannels:
    """Structured pruning: remove channels/heads (ratio per group, or a global FLOPs cut)."""

    ratio: float | None = None
    flops: float | None = None
    importance: Literal["l1", "l2", "bn", "taylor"] = "l1"
    exclude: tuple[str, ...] = ()
    max_ratio: float = 0.9
    round_to: int = 1
    scope: Literal["layer", "global"] = "layer"
    _report: object = field(default=None, init=False, repr=False, compare=False)

    def run(self, graph: Graph) -> bool:
        from graphopt.prune.structured import prune_channels

        if self.importance == "taylor":
            raise PassOptionError("prune-channels{importance=taylor} needs training batches: "
                                  "use graphopt.prune(graph, importance='taylor', data=...)")
        if self.ratio is None and self.flops is None:
            raise PassOptionError("prune-channels needs ratio= or flops=")
        self._report = prune_channels(graph, ratio=self.ratio, flops=self.flops,
                                      importance=self.importance, exclude=self.exclude,
                                      max_ratio=self.max_ratio, round_to=self.round_to,
                                      scope=self.scope)
        return any(g.removed for g in self._report.groups)
