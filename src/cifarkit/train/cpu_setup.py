"""Process-wide settings for reproducible, fast training on the CPU.

Training on the CPU allocates and frees tensors of tens of megabytes every step (activations,
gradients). glibc serves blocks that large with fresh mmap calls and returns them to the system on
free, so every step page-faults its way through the same memory again. Keeping freed memory in
the heap avoids that (together with the fill below, fast94-sgd's training on a 2-core CPU went from
503 s to 474 s: benchmarks/results/fast94-cpu-all-views-8a80d26.json, fast94-sgd-cpu-db86576.json).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_MMAP_THRESHOLD = 32 * 1024 * 1024      # glibc's largest allowed value: blocks up to this come from the heap
_TRIM_THRESHOLD = 2 ** 31 - 1           # free memory kept before the heap shrinks (mallopt takes an int)
_TOP_PAD = 256 * 1024 * 1024            # extra heap asked for per grow, so growing is rare


def prepare_cpu_training() -> None:
    """Deterministic kernels, without their cost of pre-filling new tensors, and an allocator that
    keeps freed memory. Safe to call more than once."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode would also fill every new tensor with NaN: pure overhead (a few percent of
    # a fast94 step in the profiler) for kernels that write their whole output anyway.
    torch.utils.deterministic.fill_uninitialized_memory = False
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and keep freed memory mapped.
    Returns False (and changes nothing) where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    results = [mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
               mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
               mallopt(_M_TOP_PAD, _TOP_PAD)]
    return all(r == 1 for r in results)
