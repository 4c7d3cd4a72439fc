"""Where tensors run and in what precision: device resolution, autocast, clock synchronization.

Every command maps `train.precision` to autocast here, so training, validation, evaluation,
benchmarks and prediction run their forward passes the same way.
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch

from cifarkit.errors import ConfigError, DeviceError

# auto: bf16 where the hardware computes in it natively, fp32 elsewhere (see effective_precision)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86: AVX512-BF16 or AMX; elsewhere: oneDNN's
    bf16 support). Without it bf16 is emulated, an order of magnitude slower than fp32 or worse
    (benchmarks/results/precision-speed-cpu-D.json)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        cpu = torch.cpu
        checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
        return any(check() for check in checks if check is not None)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes in bf16 at full speed: any GPU that supports it, a CPU with bf16 units."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).major >= 8      # Ampere and later
    return cpu_has_native_bf16()


def effective_precision(precision: str, device: torch.device | str) -> str:
    """What `precision` means on `device`: 'auto' becomes bf16 where the device has native bf16 and
    fp32 elsewhere; the other precisions are taken as asked."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


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


def describe_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses, and why when 'auto' chose it, for the first line of a run's log."""
    chosen = effective_precision(precision, device)
    if precision != "auto":
        return chosen
    return f"{chosen} (auto: {device.type} {'with' if chosen == 'bf16' else 'without'} native bf16)"


def emulated_bf16_warning(precision: str, device: torch.device) -> str | None:
    """A line for a run that asks for bf16 on a CPU that only emulates it, or None."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return ("this CPU has no native bf16 (no AVX512-BF16 or AMX), so bf16 runs emulated, an order of magnitude "
                "slower than fp32; --set train.precision=auto (or fp32) trains in fp32 here")
    return None


def check_training_precision(precision: str, device: torch.device) -> None:
    """fp16 needs a GPU's loss scaling; refuse it before any work starts rather than at step 0."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("'train.precision: fp16' needs a CUDA GPU; use bf16 on the CPU")


def inference_precision(precision: str, device: torch.device) -> str:
    """The precision to run a trained model in on `device`: a model trained in fp16 on a GPU is
    evaluated in fp32 on a CPU (CPUs have no fast fp16 path, and inference needs no loss scaling)."""
    precision = effective_precision(precision, device)
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


def autocast(device: torch.device, precision: str):
    """The forward-pass context for `precision`: nothing for fp32, torch.autocast otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose {', '.join(PRECISIONS)}")
    precision = effective_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    check_training_precision(precision, device)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a clock reading means something; nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["PRECISIONS", "cpu_has_native_bf16", "native_bf16", "effective_precision", "describe_precision",
           "emulated_bf16_warning", "resolve_device", "check_training_precision", "inference_precision", "autocast",
           "synchronize"]
