"""Device parametrization for the CUDA tests: the CPU always, CUDA where torch sees a GPU.

Only the CUDA cases carry the `cuda` marker, so `pytest -m cuda` runs exactly what needs a GPU,
and a machine without one reports each of them as skipped, with the reason.
"""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
NO_GPU = "needs a CUDA GPU; torch sees none here"
CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=NO_GPU))
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA_MARKS)]


def cuda_only(test):
    """Mark a test that means something only on a GPU."""
    for mark in CUDA_MARKS:
        test = mark(test)
    return test
