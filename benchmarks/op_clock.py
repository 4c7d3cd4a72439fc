"""Wall-clock time of every PyTorch op on the CPU, forward and backward, without torch.profiler.

torch.profiler changes what it measures on a CPU training step: on machine D its own allocations
made each fast94 step fault in up to 430,000 fresh memory pages, and it charged the max-pool
backward's zero fill with eight times what the whole max-pool backward takes unprofiled
(benchmarks/README.md, "CPU speed"). This clock is a dispatch mode instead: every ATen op that
reaches the dispatcher from this thread -- the forward, the backward (the autograd engine runs CPU
work in the calling thread) and the optimizer -- is timed between two `perf_counter` calls around
the op itself, and nothing else in the process changes. CPU ops are synchronous, so the interval
is the op's whole cost; ops that an op calls inside its own kernel (a max-pool backward's zero
fill) count as part of it. Not for GPUs, where ops only queue work.
"""

from __future__ import annotations

import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _shapes(args, kwargs) -> str:
    return str([list(a.shape) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)])


class OpClock(TorchDispatchMode):
    """`with OpClock() as clock:` ... then `clock.seconds[op]`, `clock.calls[op]` and
    `clock.seconds_by_shape[(op, shapes)]` (op as 'aten::convolution_backward', shapes of its tensor
    arguments)."""

    def __init__(self):
        super().__init__()
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.seconds_by_shape: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = time.perf_counter()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter() - start
        op = f"aten::{func.overloadpacket.__name__}"
        self.seconds[op] += elapsed
        self.calls[op] += 1
        self.seconds_by_shape[(op, _shapes(args, kwargs))] += elapsed
        return out

    def total_seconds(self) -> float:
        return sum(self.seconds.values())
