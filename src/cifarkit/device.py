"""Where tensors run and in what precision: device resolution, autocast, clock synchronization.

Every command maps `train.precision` to autocast here, so training, validation, evaluation,
benchmarks and prediction run their forward passes the same way.
"""

from __future__ import annotations

import contextlib

import torch

from cifarkit.errors import ConfigError, DeviceError

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but no CUDA GPU is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise DeviceError(f"unknown device '{name}'; use auto, cpu or cuda")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}'; use auto, cpu or cuda") from None
    # An index past the last GPU would otherwise fail deep inside the first copy, with a traceback.
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"'{name}' was asked for, but this machine has {torch.cuda.device_count()} CUDA "
                          "GPU(s), numbered from 0")
    return device


def check_training_precision(precision: str, device: torch.device) -> None:
    """fp16 needs a GPU's loss scaling; refuse it before any work starts rather than at step 0."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("'train.precision: fp16' needs a CUDA GPU; use bf16 on the CPU")


def inference_precision(precision: str, device: torch.device) -> str:
    """The precision to run a trained model in on `device`: a model trained in fp16 on a GPU is
    evaluated in fp32 on a CPU (CPUs have no fast fp16 path, and inference needs no loss scaling)."""
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def autocast(device: torch.device, precision: str):
    """The forward-pass context for `precision`: nothing for fp32, torch.autocast otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    check_training_precision(precision, device)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a clock reading means something; nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["PRECISIONS", "resolve_device", "check_training_precision", "inference_precision", "autocast",
           "synchronize"]
