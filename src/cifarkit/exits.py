"""How a command ends on a failure the user can act on: one line on stderr and the exit code of its
kind (the codes are listed in errors.py), never a traceback. `cifarkit` and the scripts under
benchmarks/ end the same way."""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import Callable

from cifarkit.errors import EXIT_OUT_OF_MEMORY, CifarkitError, OutputError


def run_command(prog: str, command: Callable[[], int | None]) -> int:
    """Run `command` and return its exit code, or report the failure as `prog: error: ...`."""
    def fail(message: str, code: int) -> int:
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code

    try:
        return command() or 0
    except CifarkitError as e:
        return fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        return fail("out of memory; lower train.batch_size (or train.micro_batch) and eval.batch_size with --set",
                    EXIT_OUT_OF_MEMORY)
    except OSError as e:          # disk full, permissions, ...: files are written atomically, so nothing is torn
        if isinstance(e, BrokenPipeError) and stdout_reader_gone():
            return 128 + signal.SIGPIPE   # as a shell tool ends when the pipe's reader went (`| head`): silently
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        return fail(f"{where}{e.strerror or e}", OutputError.exit_code)
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        return fail("out of memory on the device; lower train.batch_size (or train.micro_batch) "
                    "and eval.batch_size with --set", EXIT_OUT_OF_MEMORY)


def is_out_of_memory(error: RuntimeError) -> bool:
    """torch.OutOfMemoryError (CUDA) and the CPU allocator's 'DefaultCPUAllocator: can't allocate memory'."""
    import torch
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(error, oom)) or "can't allocate memory" in str(error)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`cifarkit recipes | head`). Then stdout
    is pointed at /dev/null, so that the interpreter's last flush does not fail on it again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # replaced by an object without a descriptor
        return False
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, 0)                           # POLLERR is reported for a pipe with no reader
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True
