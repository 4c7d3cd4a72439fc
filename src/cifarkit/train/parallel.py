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

    One process applies the pieces' updates in order, r <- (1 - m) r + m s_k. Rank j applies only
    its p_j pieces to the statistics R the step began with, leaving b_j = (1 - m)^p_j R + c_j. Going
    through the ranks in order, v <- (1 - m)^p_j v + (b_j - (1 - m)^p_j R) rebuilds the sequence
    of all pieces; every rank computes it from the same gathered values, in float64.
    """

    def __init__(self, model: nn.Module, world: World, pieces_per_rank: list[int]):
        self.world, self.pieces = world, pieces_per_rank
        self.norms = batch_norms(model)
        cumulative = [m for m in self.norms if m.momentum is None]
        if cumulative:
            raise ConfigError("a BatchNorm with momentum None (a cumulative average) cannot be merged across "
                              "processes; set train.sync_bn=true")
        self.start: torch.Tensor | None = None

    def _flat(self) -> torch.Tensor:
        return torch.cat([t.detach().to(torch.float64).flatten()
                          for m in self.norms for t in (m.running_mean, m.running_var)])

    def remember(self) -> None:
        self.start = self._flat() if self.norms else None

    @torch.no_grad()
    def merge(self) -> None:
        if self.start is None:
            return
        import torch.distributed as dist
        local = self._flat()
        gathered = [torch.empty_like(local) for _ in range(self.world.size)]
        dist.all_gather(gathered, local)
        keep = torch.cat([torch.full((2 * m.num_features,), 1.0 - m.momentum, dtype=torch.float64,
                                     device=local.device) for m in self.norms])
        value = replay(self.start, gathered, self.pieces, keep)
        offset = 0
        for m in self.norms:
            for t in (m.running_mean, m.running_var):
                t.copy_(value[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
            m.num_batches_tracked.add_(sum(self.pieces) - self.pieces[self.world.rank])


def replay(start: torch.Tensor, ends: list[torch.Tensor], pieces: list[int], keep: torch.Tensor) -> torch.Tensor:
    """Running statistics after every rank's updates in rank order: rank j turned `start` into
    `ends[j]` with `pieces[j]` updates r <- keep r + (1 - keep) s."""
    value = start
    for count, end in zip(pieces, ends):
        decay = keep ** count
        value = decay * value + (end - decay * start)
    return value


__all__ = ["ParallelStep", "RunningStatsMerge", "replay", "uses_sync_bn", "normalized_images"]
