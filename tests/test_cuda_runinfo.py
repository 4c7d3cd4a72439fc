"""Choosing a CUDA device and recording which GPU ran: checked on the CPU with a stand-in for the
GPU queries, and for real where a GPU exists."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cifarkit.errors import DeviceError
from cifarkit.device import resolve_device
from cifarkit.runinfo import hardware
from cuda_params import cuda_only

GPU_KEYS = {"gpu", "gpu_memory_gib", "gpu_capability", "gpu_count", "cuda", "cudnn", "cudnn_benchmark"}


@pytest.fixture
def one_fake_gpu(monkeypatch):
    """torch reports one GPU (an H200-like one) without touching a driver."""
    props = SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)


def test_a_gpu_index_past_the_last_one_is_a_clear_error(one_fake_gpu):
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="'cuda:1' was asked for, but this machine has 1 CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="unknown device 'cudax'"):
        resolve_device("cudax")


def test_hardware_names_the_gpu_its_capability_and_cudnn(one_fake_gpu):
    info = hardware("cuda")
    assert GPU_KEYS <= set(info)
    assert info["gpu"] == "NVIDIA H200" and info["gpu_memory_gib"] == 141.0 and info["gpu_capability"] == "9.0"
    assert info["gpu_count"] == 1 and info["cudnn"] == 91002 and isinstance(info["cudnn_benchmark"], bool)
    assert not GPU_KEYS & set(hardware("cpu"))


@cuda_only
def test_hardware_on_a_real_gpu():
    info = hardware("cuda")
    assert info["gpu"] == torch.cuda.get_device_name(0) and info["gpu_memory_gib"] > 0
    major, minor = torch.cuda.get_device_capability(0)
    assert info["gpu_capability"] == f"{major}.{minor}" and info["cudnn"] == torch.backends.cudnn.version()
    with pytest.raises(DeviceError, match="numbered from 0"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
