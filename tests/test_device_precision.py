"""train.precision 'auto': bf16 where the hardware computes in it, fp32 where bf16 is only emulated;
explicit precisions are taken as asked, with a warning for emulated bf16."""

from __future__ import annotations

import platform
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import cifarkit.device as device_module
from cifarkit.bench import yardstick, yardstick_key, yardstick_precision
from cifarkit.config import load_recipe
from cifarkit.device import (autocast, cpu_has_native_bf16, describe_precision, effective_precision,
                             emulated_bf16_warning, inference_precision)
from cifarkit.experiment import Experiment

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def bf16_units(request, monkeypatch):
    """Pretend this CPU has (or lacks) native bf16."""
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_auto_is_bf16_only_with_native_bf16_and_the_others_are_as_asked(bf16_units):
    assert effective_precision("auto", CPU) == ("bf16" if bf16_units else "fp32")
    for precision in ("fp32", "bf16", "fp16"):
        assert effective_precision(precision, CPU) == precision
    assert inference_precision("auto", CPU) == effective_precision("auto", CPU)
    assert inference_precision("fp16", CPU) == "fp32"


def test_autocast_follows_what_auto_chose(bf16_units):
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") == bf16_units
        y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    assert y.dtype == (torch.bfloat16 if bf16_units else torch.float32)


def test_the_log_says_what_auto_chose_and_why(bf16_units):
    assert describe_precision("auto", CPU) == ("bf16 (auto: cpu with native bf16)" if bf16_units
                                               else "fp32 (auto: cpu without native bf16)")
    assert describe_precision("fp32", CPU) == "fp32"


def test_bf16_asked_for_on_a_cpu_that_emulates_it_is_warned_about(bf16_units):
    warning = emulated_bf16_warning("bf16", CPU)
    assert (warning is None) == bf16_units
    if warning:
        assert "train.precision=auto" in warning
    assert emulated_bf16_warning("auto", CPU) is None and emulated_bf16_warning("fp32", CPU) is None


def test_experiment_check_logs_the_warning_once_per_check(bf16_units):
    lines = []
    Experiment(load_recipe("fast94", ["train.precision=bf16", "model.widths=[8,16,16]"]), device="cpu",
               log=lines.append).check()
    assert len([line for line in lines if "emulated" in line]) == (0 if bf16_units else 1)


def test_a_gpu_has_native_bf16_from_ampere_on(monkeypatch):
    for major, native in ((7, False), (8, True), (9, True)):
        props = SimpleNamespace(major=major, minor=0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None, p=props: p)
        assert device_module.native_bf16(torch.device("cuda")) == native
        assert effective_precision("auto", torch.device("cuda")) == ("bf16" if native else "fp32")


@pytest.mark.skipif(platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(),
                    reason="reads the x86 CPU flags from /proc/cpuinfo")
def test_native_bf16_agrees_with_the_cpu_flags_the_kernel_reports():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_the_yardstick_is_taken_in_the_precision_the_hardware_computes_in(bf16_units):
    assert yardstick_precision(CPU) == ("bf16" if bf16_units else "fp32")
    assert yardstick_key(CPU) == f"{yardstick_precision(CPU)}_matmul_gflops"
    assert yardstick({yardstick_key(CPU): {"before": 1.0, "after": 2.0}}) == {"before": 1.0, "after": 2.0}
