"""benchmarks/op_clock.py times ops without changing them, and profile_step.py's dispatch clock
reports a real step's ops, forward and backward."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from op_clock import OpClock  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def _gradients(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    net(x).square().mean().backward()
    return [p.grad.clone() for p in net.parameters()]


def test_the_clock_sees_forward_and_backward_ops_and_changes_no_result():
    net, x = _net(), torch.randn(4, 3, 16, 16)
    expected = _gradients(net, x)
    start = time.perf_counter()
    with OpClock() as clock:
        got = _gradients(net, x)
    wall = time.perf_counter() - start
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    # two convolutions forward, two backward (the autograd engine runs CPU work in this thread)
    assert clock.calls["aten::convolution"] == 2 and clock.calls["aten::convolution_backward"] == 2
    assert clock.calls["aten::max_pool2d_with_indices_backward"] == 1
    assert 0 < clock.total_seconds() <= wall
    conv_shapes = {shapes for op, shapes in clock.seconds_by_shape if op == "aten::convolution"}
    assert conv_shapes == {"[[4, 3, 16, 16], [8, 3, 3, 3], [8]]", "[[4, 8, 8, 8], [8, 8, 3, 3], [8]]"}
    assert sum(clock.seconds_by_shape.values()) == clock.total_seconds()


def test_profile_step_with_the_dispatch_clock_times_every_conv_of_a_step(tmp_path):
    out = tmp_path / "clock.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--recipe", "fast94", "--clock", "dispatch",
               "--steps", "2", "--set", "train.batch_size=64", "--set", "train.micro_batch=32",
               "--set", "model.widths=[8,16,16]", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["clock"] == "dispatch"
    for key in ("profiled_step_seconds", "unprofiled_step_seconds", "profiled_step_minor_page_faults"):
        assert len(report[key]) == 2
    calls = {row["op"]: row["calls_per_step"] for row in report["ops"]}
    # 7 convolutions (the whitening one for its bias) in each of the 2 micro-batches of a step
    assert calls["aten::convolution"] == 14 and calls["aten::convolution_backward"] == 14
    assert 0 < report["op_seconds_share_of_profiled_steps"] <= 1
    shares = [row["share"] for row in report["ops"]]
    assert shares == sorted(shares, reverse=True) and 0.5 < sum(shares) <= 1
