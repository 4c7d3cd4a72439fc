"""The CPU training set-up: deterministic kernels without NaN pre-fill, and an allocator that keeps
freed memory (checked in fresh interpreters, since mallopt changes the whole process)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from cifarkit.train.cpu_setup import prepare_cpu_training

# Page faults taken, once the heap has settled, by a step-like pattern: five 24 MB tensors allocated,
# written and freed together. Without the tuning glibc may hand the freed memory back to the system
# (whether it does depends on its adaptive thresholds), and then every step faults it in again.
_STEADY_STATE_FAULTS = """
import resource, sys, torch
torch.set_num_threads(1)
from cifarkit.train.cpu_setup import keep_freed_memory
assert keep_freed_memory()
def step():
    tensors = [torch.empty(6 * 1024 * 1024).fill_(1) for _ in range(5)]
    del tensors
for _ in range(10):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_stays_mapped():
    out = subprocess.run([sys.executable, "-c", _STEADY_STATE_FAULTS], capture_output=True, text=True, check=True)
    pages_written = 5 * 5 * 24 * 1024 * 1024 // 4096
    assert int(out.stdout.split()[-1]) < pages_written // 100


def test_prepare_cpu_training_keeps_deterministic_mode_without_nan_fill():
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    try:
        prepare_cpu_training()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
        assert not torch.isnan(torch.empty(1024)).all()   # with the pre-fill this would be all NaN
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
