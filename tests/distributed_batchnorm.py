"""One rank of the SyncBatchNorm test: HostSyncBatchNorm on this rank's half of a batch, against
BatchNorm on the whole batch, for an exponential (momentum 0.1) and a cumulative (None) average.
Writes the largest differences (outputs, gradients, running statistics) to OUT.rank<R>.json.

    python distributed_batchnorm.py OUT
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from cifarkit.train.distributed import join
from cifarkit.train.sync_batchnorm import HostSyncBatchNorm, convert_sync_batchnorm


def net(momentum):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6, momentum=momentum), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6, momentum=momentum))


def main(out: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4, 6, 6) * 3 + 2
    weights = torch.randn(16, 6, 6, 6)
    report = {}
    with join(torch.device("cpu")) as world:
        half = slice(world.rank * 8, world.rank * 8 + 8)
        for momentum in (0.1, None):
            whole = net(momentum)
            for _ in range(2):                       # two steps: the running statistics move twice
                expected = whole(x)
                (expected * weights).sum().backward()
            synced = convert_sync_batchnorm(net(momentum), world.device)
            assert sum(isinstance(m, HostSyncBatchNorm) for m in synced.modules()) == 2
            for _ in range(2):
                got = synced(x[half])
                (got * weights[half]).sum().backward()
            for p in synced.parameters():
                dist.all_reduce(p.grad)
            report[str(momentum)] = {
                "output": (got - expected[half]).abs().max().item(),
                "gradients": max(((a.grad - b.grad).abs().max() / b.grad.abs().max()).item()
                                 for a, b in zip(synced.parameters(), whole.parameters()) if b.grad.abs().max() > 1e-3),
                "running": max((a.float() - b.float()).abs().max().item()
                               for a, b in zip(synced.buffers(), whole.buffers())),
            }
    with open(f"{out}.rank{world.rank}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
