"""How one process takes its part of each optimizer step when several train one model (DDP).

The recipe's `train.batch_size` is the global batch. Every rank receives the whole global batch
from its loader (augmented and mixed exactly as a single process would), and computes its
contiguous share of the rows: rank r of W takes rows [r B/W, (r+1) B/W). Within its share it cuts
pieces where the single process cuts its micro-batches (`train.micro_batch`), so a share that is
a whole number of micro-batches is computed piece for piece as one process computes it, BatchNorm
statistics included. Each piece's loss is weighted by its rows / B x W: DDP averages the ranks'
gradients (divides by W), which leaves exactly the gradient of the global batch-mean loss.
Gradients are exchanged once per step: DDP's no_sync() for all but the last piece.

BatchNorm (`train.sync_bn`, auto by default):
  * a share that is a whole number of micro-batches: no synchronization is needed; after each
    step the running statistics of the ranks are merged in rank order, as one process would have
    updated them piece after piece (`RunningStatsMerge`), so every rank holds the same buffers;
  * otherwise (no micro-batching, or micro-batches larger than a share): SyncBatchNorm, so each
    piece is normalized over the rows of all ranks -- exactly the single process's statistics
    without micro-batching.

In a single process none of this runs: the pieces are the micro-batches, the model is not
wrapped, and the step is the one it always was.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable

import torch
from torch import nn

from cifarkit.config import TrainConfig
from cifarkit.errors import ConfigError
from cifarkit.train.distributed import World
from cifarkit.train.sync_batchnorm import batch_norms, convert_sync_batchnorm


def uses_sync_bn(cfg: TrainConfig, world_size: int) -> bool:
    """Whether BatchNorm synchronizes across the ranks for this recipe at this world size."""
    if world_size == 1:
        return False
    if cfg.sync_bn != "auto":
        return bool(cfg.sync_bn)
    share = cfg.batch_size // world_size
    piece = min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)
    return share % piece != 0


def normalized_images(cfg: TrainConfig, world_size: int, sync: bool) -> tuple[int, int]:
    """(images a BatchNorm layer normalizes at once in one process, the same with `world_size` ranks)."""
    piece = min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)
    share = cfg.batch_size // world_size
    per_rank = min(piece, share) if sync else (piece if share % piece == 0 else min(piece, share))
    return piece, per_rank * world_size if sync else per_rank


class ParallelStep:
    def __init__(self, model: nn.Module, cfg: TrainConfig, world: World, *,
                 log: Callable[[str], None] = print):
        self.model, self.cfg, self.world = model, cfg, world
        self.size = world.size
        if cfg.batch_size % world.size:
            raise ConfigError(f"'train.batch_size' {cfg.batch_size} is the global batch and must be a multiple of "
                              f"the {world.size} processes; choose another batch size or number of processes")
        self.sync_bn = world.distributed and uses_sync_bn(cfg, world.size)
        if self.sync_bn:
            convert_sync_batchnorm(model, world.device)
        if world.size > 1:
            single, several = normalized_images(cfg, world.size, self.sync_bn)
            if single != several:
                log(f"BatchNorm normalizes {several} images at a time on {world.size} processes, {single} in one "
                    "process: the training differs from a single process's (see train.sync_bn)")
        merge = world.distributed and world.size > 1 and not self.sync_bn
        self.running_stats = RunningStatsMerge(model, world, self._pieces_per_rank()) if merge else None
        self._forward = None
        self._ddp = None
        self._trainable: tuple[bool, ...] | None = None

    # -- the model as this rank runs it --------------------------------------------------------
    def forward_module(self) -> nn.Module:
        """What the step calls: the model, wrapped in DDP when distributed (rebuilt when the set of
        trained parameters changes, e.g. FastNet's whitening bias freezing), compiled when asked."""
        trainable = tuple(p.requires_grad for p in self.model.parameters()) if self.world.distributed else ()
        if self._forward is None or trainable != self._trainable:
            self._ddp = self._forward = None            # drop the old reducer's hooks first
            module = self.model
            if self.world.distributed:
                module = self._ddp = _ddp(self.model, self.world.device)
            self._forward = torch.compile(module) if self.cfg.compile else module
            self._trainable = trainable
        return self._forward

    # -- the rows of a global batch ------------------------------------------------------------
    def bounds(self, batch: int, rank: int | None = None) -> list[int]:
        """Cut points of `rank`'s pieces in a global batch of `batch` rows."""
        rank = self.world.rank if rank is None else rank
        share = batch // self.size
        lo, hi = rank * share, (rank + 1) * share
        piece = self.cfg.micro_batch or batch
        if self.sync_bn:        # the same number of pieces on every rank: SyncBatchNorm meets in each
            step = min(piece, share)
            return list(range(lo, hi, step)) + [hi]
        return [lo] + [k for k in range((lo // piece + 1) * piece, hi, piece)] + [hi]

    def pieces(self, x: torch.Tensor, targets: torch.Tensor):
        """(images, targets, gradient sync context, loss weight) of each of this rank's pieces."""
        self.forward_module()           # the DDP wrapper whose no_sync() the pieces but the last use
        cuts = self.bounds(len(x))
        last = len(cuts) - 2
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            sync = contextlib.nullcontext() if (self._ddp is None or i == last) else self._ddp.no_sync()
            yield x[a:b], targets[a:b], sync, (b - a) * self.size / len(x)

    def _pieces_per_rank(self) -> list[int]:
        return [len(self.bounds(self.cfg.batch_size, r)) - 1 for r in range(self.size)]

    # -- around each optimizer step ------------------------------------------------------------
    def before_step(self) -> None:
        if self.running_stats is not None:
            self.running_stats.remember()

    def after_step(self) -> None:
        if self.running_stats is not None:
            self.running_stats.merge()


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP without its per-forward buffer broadcast: the ranks' buffers agree by construction
    (SyncBatchNorm, or RunningStatsMerge after each step), and rank 0's would be wrong."""
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:   # torch >= 2.12
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


class RunningStatsMerge:
    """BatchNorm running statistics as one process would have left them after a step.

    One process applies the pieces' updates in order, r <- k r + (1 - k) s_i (k = 1 - momentum).
    Rank j applies only its p_j pieces to the statistics R the step began with, leaving
    E_j = d_j R + c_j with d_j = k^p_j. Taking the ranks in order, v <- d_j v + (E_j - d_j R) rebuilds
    the sequence of all pieces (`replay`); every rank computes it from the same gathered values,
    in float64, as one weighted sum whose weights depend only on k and the p_j.
    """

    def __init__(self, model: nn.Module, world: World, pieces_per_rank: list[int]):
        self.world, self.pieces = world, pieces_per_rank
        self.norms = batch_norms(model)
        if any(m.momentum is None for m in self.norms):
            raise ConfigError("a BatchNorm with momentum None (a cumulative average) cannot be merged across "
                              "processes; set train.sync_bn=true")
        self.buffers = [t for m in self.norms for t in (m.running_mean, m.running_var)]
        self.sizes = [t.numel() for t in self.buffers]
        self.start: torch.Tensor | None = None
        self.weights = None

    def _flat(self) -> torch.Tensor:
        return torch.cat([t.detach().flatten() for t in self.buffers]).to(torch.float64)

    def remember(self) -> None:
        self.start = self._flat() if self.buffers else None

    @torch.no_grad()
    def merge(self) -> None:
        if self.start is None:
            return
        import torch.distributed as dist
        local = self._flat()
        gathered = [torch.empty_like(local) for _ in range(self.world.size)]
        dist.all_gather(gathered, local)
        if self.weights is None:
            keep = torch.cat([torch.full((2 * m.num_features,), 1.0 - m.momentum, dtype=torch.float64)
                              for m in self.norms]).to(local.device)
            self.weights = replay_weights(self.pieces, keep)
        ends, start_weight = self.weights
        value = (ends * torch.stack(gathered)).sum(0) + start_weight * self.start
        torch._foreach_copy_(self.buffers, [v.view_as(t) for v, t in zip(value.split(self.sizes), self.buffers)])
        for m in self.norms:
            m.num_batches_tracked.add_(sum(self.pieces) - self.pieces[self.world.rank])


def replay_weights(pieces: list[int], keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights (W, n) of the ranks' ends and (n) of the start in `replay`: unrolling
    v <- d_j v + (E_j - d_j R) gives v = sum_j C_j E_j + (prod_j d_j - sum_j C_j d_j) R, where
    C_j = prod_{i > j} d_i."""
    decays = torch.stack([keep ** count for count in pieces])           # d_j
    later = torch.ones_like(keep)
    ends = []
    for d in reversed(decays):
        ends.append(later)
        later = later * d
    ends = torch.stack(ends[::-1])                                       # C_j
    return ends, later - (ends * decays).sum(0)


def replay(start: torch.Tensor, ends: list[torch.Tensor], pieces: list[int], keep: torch.Tensor) -> torch.Tensor:
    """Running statistics after every rank's updates in rank order: rank j turned `start` into
    `ends[j]` with `pieces[j]` updates r <- keep r + (1 - keep) s."""
    weights, start_weight = replay_weights(pieces, keep)
    return (weights * torch.stack(ends)).sum(0) + start_weight * start


__all__ = ["ParallelStep", "RunningStatsMerge", "replay", "replay_weights", "uses_sync_bn", "normalized_images"]
