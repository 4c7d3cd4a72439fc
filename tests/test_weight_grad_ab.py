"""benchmarks/weight_grad_ab.py: every weight-gradient variant it times computes PyTorch's weight
gradient (to bf16 rounding), and one that does not is refused before anything is timed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "weight_grad_ab.py"


@pytest.fixture(scope="module")
def weight_grad_ab():
    spec = importlib.util.spec_from_file_location("weight_grad_ab", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_variant_matches_torchs_weight_gradient(weight_grad_ab):
    errors = weight_grad_ab.check_variants(images=8)
    assert set(errors) == set(weight_grad_ab.VARIANTS)
    assert all(0 <= e <= 2e-2 for e in errors.values())


def test_a_variant_with_a_wrong_gradient_is_refused(weight_grad_ab):
    def transposed_taps(x, grad):            # a plausible bug: the kernel's dy and dx swapped
        return weight_grad_ab.IM2COL(x, grad).transpose(2, 3)

    with pytest.raises(SystemExit, match="transposed_taps differs from PyTorch's weight gradient"):
        weight_grad_ab.check_variants({"transposed_taps": transposed_taps}, images=8)


def test_the_shifted_rows_variant_handles_a_batch_of_one_and_non_square_maps(weight_grad_ab):
    x = torch.randn(1, 4, 3, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    g = torch.randn(1, 6, 3, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(weight_grad_ab.shifted_matmuls(x, g).float(), weight_grad_ab.torch_weight_grad(x, g),
                               rtol=2e-2, atol=2e-2)


def test_the_reused_buffer_computes_exactly_what_the_concatenation_did(weight_grad_ab):
    """The module's im2col now copies into a kept buffer instead of concatenating into a new tensor:
    the same columns and the same matrix multiply, so the same bits, and fast94 trains exactly as
    before (its accuracies per seed carry over)."""
    generator = torch.Generator().manual_seed(0)
    for n, c, hw in ((50, 256, 7), (50, 256, 3), (20, 64, 5)):
        x = torch.randn(n, c, hw, hw, generator=generator).bfloat16().contiguous(memory_format=torch.channels_last)
        g = torch.randn(n, c, hw, hw, generator=generator).bfloat16().contiguous(memory_format=torch.channels_last)
        assert torch.equal(weight_grad_ab.IM2COL(x, g), weight_grad_ab.im2col_cat(x, g))
