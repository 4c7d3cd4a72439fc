"""`--nproc N`: start N ranks of a cifarkit command on this machine with torchrun's own launcher
(torch.distributed.run, run in this process), so that `cifarkit train --nproc 2 ...` is
`torchrun --standalone --nproc-per-node 2 -m cifarkit train ...` with cifarkit's exit codes:
130/143 when SIGINT/SIGTERM stopped the ranks (torchrun forwards the signal to every rank; they
stop after the same step and rank 0 writes the checkpoint), and a failed rank's own code otherwise.
"""

from __future__ import annotations

import os
import signal

from cifarkit.errors import CifarkitError, ConfigError, DeviceError
from cifarkit.train.distributed import launched
from cifarkit.train.interrupt import Interrupted


class RankFailed(CifarkitError):
    """A rank started by --nproc exited with an error (its own message is printed above)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `OPTION VALUE` and `OPTION=VALUE` (a rank's command is its launcher's without --nproc)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def without_nproc(argv: list[str]) -> list[str]:
    return without_option(argv, "--nproc")


def check_nproc(device, nproc: int) -> None:
    """Refuse, before any process starts, what `launch` cannot do: fewer than one process, a
    launch from inside a rank, more processes than this machine has GPUs (one GPU each)."""
    import torch
    if launched():
        raise ConfigError("--nproc starts torchrun itself; under torchrun leave it out")
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise DeviceError(f"--nproc {nproc} needs {nproc} CUDA GPUs, but this machine has {torch.cuda.device_count()}")


def launch(nproc: int, rank_args: list[str], *, entry: tuple[str, ...] = ("-m", "cifarkit")) -> int:
    """Run `python ENTRY RANK_ARGS...` (`python -m cifarkit ...`) as `nproc` ranks here; returns 0
    when every rank did."""
    import torch
    check_nproc(torch.device("cpu"), nproc)       # the GPUs were counted by the command, with its device
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun gives every rank one thread unless told otherwise: on CPUs, share the cores instead.
    threads_given = "OMP_NUM_THREADS" in os.environ
    if not threads_given:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", *entry, *rank_args])
    try:
        run(args)
    except SignalException as e:
        raise Interrupted(int(e.sigval), f"passed on to the {nproc} processes, which stopped") from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code < 0:                       # killed by a signal
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            raise RankFailed(f"rank {rank} of {nproc} was killed by {name}", 128 - code) from None
        raise RankFailed(f"rank {rank} of {nproc} exited with code {code} (its error is above)", code or 1) from None
    finally:
        if not threads_given:
            del os.environ["OMP_NUM_THREADS"]
    return 0


__all__ = ["launch", "without_nproc", "without_option", "check_nproc", "RankFailed"]
