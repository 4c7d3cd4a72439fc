"""What produced a result: package and library versions, git commit, hardware, seeds.

Written into every run directory and every benchmark JSON so a number can be traced to its code.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

import cifarkit
from cifarkit.device import native_bf16


def git_commit() -> str | None:
    """The commit of the cifarkit source tree, with '+dirty' when it has uncommitted changes."""
    src = Path(cifarkit.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


# CPU features that decide how fast bf16 training runs; recorded so results from different
# machines (which may share a marketing name such as "AMD EPYC") can be told apart.
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_identity() -> dict:
    """Vendor, family/model/stepping and the speed-relevant instruction sets of this CPU."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"vendor": info.get("vendor_id"),
            "family_model_stepping": "/".join(info.get(k, "?") for k in ("cpu family", "model", "stepping")),
            "flags": [f for f in _SPEED_FLAGS if f in flags]}


def hardware(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_identity": cpu_identity(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": native_bf16(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        # Compute capability and cuDNN version decide which kernels run; cudnn.benchmark whether
        # convolution algorithms were timed (in the warm-up) or picked by heuristics.
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpu_capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
    return info


def versions() -> dict:
    import torchvision
    import numpy
    return {
        "cifarkit": cifarkit.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def run_record(device: torch.device | str, **extra) -> dict:
    return {"versions": versions(), "git_commit": git_commit(), "hardware": hardware(device), **extra}
