"""The processes of one data-parallel run: who this process is among them, and the few
collectives training needs besides DDP's own.

A process started by torchrun (RANK, WORLD_SIZE and LOCAL_RANK in its environment, with
MASTER_ADDR / MASTER_PORT or torchrun's rendezvous) joins the process group: NCCL on GPUs, each
rank on cuda:LOCAL_RANK, gloo on CPUs. Any other process is a world of one, in which every helper
here returns its input untouched: single-process training runs the code it always ran.

Every collective waits at most CIFARKIT_DIST_TIMEOUT seconds (default 600). A rank that dies
closes its connections, and gloo fails the others' next collective at once; a rank that hangs
fails them after the timeout. Either way the survivors end with one line naming the lost rank
instead of waiting forever (`DistributedError`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from cifarkit.errors import CifarkitError, DeviceError

DEFAULT_TIMEOUT_SECONDS = 600.0
T = TypeVar("T")


class DistributedError(CifarkitError):
    """Another process of the run died, hung past the timeout, or could not be reached."""


class PeerFailed(CifarkitError):
    """Another rank failed while the ranks were starting together; carries that rank's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launched() -> bool:
    """Whether this process is one rank of a torchrun (or equivalent env://) launch."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0, or a process that is not part of a launch: the one that writes files and prints."""
    return not launched() or os.environ.get("RANK") == "0"


def timeout_seconds() -> float:
    raw = os.environ.get("CIFARKIT_DIST_TIMEOUT", "")
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e7:
        raise DistributedError(f"CIFARKIT_DIST_TIMEOUT must be a number of seconds > 0, got '{raw[:40]}'")
    return value


@dataclass
class World:
    """This process's place among the ranks of a run. `World()` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    distributed: bool = False          # a process group exists (under torchrun, even with one rank)
    host_group: object = None          # gloo group for flags and small objects: no GPU synchronization

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def stream_key(self) -> tuple:
        """What tells this rank's own random streams (dropout) from the other ranks': nothing in a
        single process, so that its draws stay what they always were."""
        return ("rank", self.rank) if self.size > 1 else ()

    def agreed_signal(self, signum: int | None) -> int | None:
        """The signal any rank has received (None when none has): every rank stops after the same step."""
        if not self.distributed:
            return signum
        flag = torch.tensor([signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.host_group)
        return int(flag.item()) or None

    def sum(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Scalar tensors summed over the ranks (one collective); untouched in a single process."""
        if not self.distributed:
            return tensors
        packed = torch.stack([t.detach().to(torch.float64).reshape(()) for t in tensors])
        dist.all_reduce(packed)
        return tuple(packed[i].to(t.dtype) for i, t in enumerate(tensors))

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj` (picklable, small), in rank order."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj, group=self.host_group)
        return out

    def together(self, fn: Callable[[], T]) -> T:
        """Run `fn` on every rank; when it failed anywhere, fail everywhere (with that rank's exit
        code), so that no rank goes on to a collective the failed one will never join."""
        if not self.distributed:
            return fn()
        error, result = None, None
        try:
            result = fn()
        except BaseException as e:      # noqa: BLE001 -- re-raised below, after the others know
            error = e
        status = None if error is None else (getattr(error, "exit_code", 1), _one_line(error))
        statuses = self.gather(status)
        if error is not None:
            raise error
        failed = [(rank, s) for rank, s in enumerate(statuses) if s is not None]
        if failed:
            rank, (code, message) = failed[0]
            raise PeerFailed(f"rank {rank} of {self.size} failed: {message}", code)
        return result


@contextlib.contextmanager
def join(device: torch.device) -> Iterator[World]:
    """The world of this process: a single process, or (under torchrun) a rank of the process
    group, set up here and torn down on the way out. A lost rank becomes a `DistributedError`."""
    if not launched():
        yield World(device=device)
        return
    rank, size, local_rank = (_env_int(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"rank {rank} has LOCAL_RANK {local_rank}, but this machine has "
                              f"{torch.cuda.device_count()} CUDA GPU(s); start at most that many processes per machine")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    seconds = timeout_seconds()
    timeout = datetime.timedelta(seconds=seconds)
    try:
        dist.init_process_group(backend, timeout=timeout)
        host_group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {rank} of {size} could not join the other processes within {seconds:g} s: "
                               f"{_one_line(e)}") from None
    world = World(rank=rank, size=size, local_rank=local_rank, device=device, distributed=True,
                  host_group=host_group)
    try:
        yield world
    except Exception as e:
        if not lost_contact(e):
            raise
        # Tear the group down here: left to the interpreter's exit, gloo's worker threads can be
        # destroyed while still joinable, and the process aborts after the error line (SIGABRT).
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        raise DistributedError(f"rank {rank} of {size} lost contact with another process of the run (it "
                               f"died, or did not answer within {seconds:g} s, CIFARKIT_DIST_TIMEOUT): "
                               f"{_one_line(e)}") from None
    else:
        dist.destroy_process_group()


def lost_contact(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank is gone or silent."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out", "timed out"))


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "0")
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"the environment variable {name} must be an integer, got '{raw[:20]}'") from None


def _one_line(error: BaseException) -> str:
    """The first line of an error, without the source location C++ errors start with."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[^\]]*\.(?:cpp|cc|h|hpp):\d+\]\s*", "", text)
    first_sentence = re.match(r"(.+?\.)(?:\s|$)", text)     # gloo adds advice and an emoji after it
    return (first_sentence.group(1) if first_sentence else text)[:300]


__all__ = ["DistributedError", "PeerFailed", "World", "join", "launched", "is_main_process", "lost_contact",
           "timeout_seconds", "DEFAULT_TIMEOUT_SECONDS"]
