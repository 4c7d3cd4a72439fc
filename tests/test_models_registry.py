"""build_model, parameter counting, the budget check, torchinfo summaries, FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarkit.errors import BudgetError, ConfigError
from cifarkit.models.fastnet import FastNet
from cifarkit.models.registry import (
    ModelSummary, build_model, check_budget, count_parameters, flops_per_image, summarize)
from cifarkit.models.resnet import ResNet
from cifarkit.models.specs import FastNetSpec, ResNetSpec

SPEC_002 = ResNetSpec(stem_width=66, widths=[66, 132, 264], blocks=[3, 4, 3])
MULT_ADDS_002 = 769e6  # torchinfo's figure in reference 002's report


@pytest.fixture(scope="module")
def model_002() -> nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC_002)


def test_build_model_dispatches_on_arch():
    assert isinstance(build_model(ResNetSpec(stem_width=8, widths=[8], blocks=[1])), ResNet)
    fast = build_model(FastNetSpec(widths=[8, 8, 8]), num_classes=100)
    assert isinstance(fast, FastNet) and fast.head.out_features == 100


def test_build_model_rejects_an_invalid_spec():
    with pytest.raises(ConfigError, match="dropout"):
        build_model(ResNetSpec(dropout=1.5))


def test_count_parameters_all_and_trainable():
    model = build_model(FastNetSpec())
    assert count_parameters(model) == 1_972_792
    assert count_parameters(model, trainable_only=True) == 1_972_792 - 288 - 1152
    assert count_parameters(nn.Linear(3, 4)) == 16


def test_check_budget(model_002):
    assert check_budget(model_002, 5_000_000) == 4_916_284
    assert check_budget(model_002, 4_916_284) == 4_916_284  # the budget is the most allowed
    with pytest.raises(BudgetError) as err:
        check_budget(model_002, 4_900_000)
    message = str(err.value)
    assert "4,916,284 parameters" in message and "4,900,000" in message and "by 16,284" in message
    assert "allow_over_budget" in message and "\n" not in message
    assert check_budget(model_002, 4_900_000, allow_over=True) == 4_916_284


def test_summarize_with_torchinfo_matches_reference_002(model_002):
    model_002.train()
    before = {k: v.clone() for k, v in model_002.state_dict().items()}
    summary = summarize(model_002)
    assert isinstance(summary, ModelSummary)
    assert summary.total_params == summary.trainable_params == 4_916_284
    assert summary.mult_adds == pytest.approx(MULT_ADDS_002, rel=0.01)
    assert "BasicBlock" in summary.table and "Conv2d" in summary.table
    # The model itself is untouched: same mode, same weights and BN statistics.
    assert model_002.training
    assert all(torch.equal(before[k], v) for k, v in model_002.state_dict().items())


def test_fastnet_summary_lists_every_convolution_with_its_multiply_adds():
    # FastNet's convolutions sit in lists its groups re-enter in turn; the table must show each
    # of them, not torchinfo's "(recursive)" container rows in their place.
    table = summarize(build_model(FastNetSpec())).table
    assert "(recursive)" not in table and "Mult-Adds" in table
    convs = [line for line in table.splitlines() if "DiracConv" in line]
    assert len(convs) == 6
    # The second group's first convolution: 64 -> 256 channels, 3x3, on the 15x15 map before its pool.
    assert "[1, 256, 15, 15]" in convs[2]
    params, mult_adds = convs[2].split()[-2:]
    assert params == f"{64 * 256 * 9:,}" and mult_adds == f"{64 * 256 * 9 * 15 * 15:,}"


def test_flops_per_image_by_hand_and_per_image():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    expected = 2 * (3 * 8 * 9 * 32 * 32) + 2 * (8 * 32 * 32 * 10)
    assert flops_per_image(conv) == expected
    assert flops_per_image(conv, input_size=(4, 3, 32, 32)) == expected


def test_flops_per_image_of_002_and_mode_preserved(model_002):
    model_002.train()
    assert flops_per_image(model_002) == pytest.approx(2 * MULT_ADDS_002, rel=0.01)
    assert model_002.training
