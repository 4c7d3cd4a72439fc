"""Milliseconds per batch for each augmentation op and for whole recipe pipelines.

    python benchmarks/augment_speed.py                       # 512-image batches on the best device
    python benchmarks/augment_speed.py --device cpu --batch 128 --repeats 20 --threads 1
    python benchmarks/augment_speed.py --json benchmarks/results/augment_speed.json

Reports the median and the minimum over `repeats` timed calls after `warmup` untimed ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cifarkit import __version__
from cifarkit.augment import color, erasing, geometric, policies
from cifarkit.augment.mixing import Mixer
from cifarkit.augment.pipeline import build_augment
from cifarkit.config import AugmentConfig

MEAN = (0.49139968, 0.48215841, 0.44653091)

PIPELINES = {
    "pipeline crop+flip": dict(crop_padding=4, flip="random"),
    "pipeline seed002 (crop+flip+randaugment+erasing)": dict(policy="randaugment", erasing_p=0.5),
    "pipeline seed003 (crop+flip+jitter+autoaugment+rotation)": dict(
        policy="autoaugment", color_jitter=[0.2, 0.2, 0.2, 0.0], rotation=15),
    "pipeline seed004 (reflect crop+flip+rotation+jitter+perspective)": dict(
        crop_mode="reflect", rotation=15, color_jitter=[0.1, 0.1, 0.1, 0.02], perspective=0.1),
}


def ops(fill: torch.Tensor) -> dict[str, Callable]:
    mixer = Mixer(10, 0.5, 1.0, 0.5, 1.0)
    return {
        "random_crop zeros pad 4": lambda x, g: geometric.random_crop(x, 4, g),
        "random_crop reflect pad 4": lambda x, g: geometric.random_crop(x, 4, g, "reflect"),
        "random_flip": lambda x, g: geometric.random_flip(x, g),
        "alternating_flip": lambda x, g: geometric.alternating_flip(x, 1, torch.arange(x.shape[0], device=x.device), 0),
        "random_rotation 15": lambda x, g: geometric.random_rotation(x, 15, g),
        "random_perspective 0.1 p 0.5": lambda x, g: geometric.random_perspective(x, 0.1, 0.5, g),
        "color_jitter 0.1/0.1/0.1/0.02": lambda x, g: color.color_jitter(x, 0.1, 0.1, 0.1, 0.02, g),
        "autoaugment_cifar10": lambda x, g: policies.autoaugment_cifar10(x, g),
        "randaugment 2/9": lambda x, g: policies.randaugment(x, 2, 9, g),
        "trivialaugment": lambda x, g: policies.trivialaugment(x, g),
        "random_erasing p 0.5": lambda x, g: erasing.random_erasing(x, 0.5, (0.02, 0.33), (0.3, 3.3), fill, g),
        "cutout 8": lambda x, g: erasing.cutout(x, 8, fill, g),
        "mixup/cutmix": lambda x, g: mixer(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 0.0, g),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_op(fn: Callable, x: torch.Tensor, g: torch.Generator, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn(x, g)
    sync(x.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x, g)
        sync(x.device)
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0 = torch's default)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (args.batch, 3, 32, 32), generator=g, device=device).float() / 255
    fill = torch.tensor(MEAN, device=device)
    benches = dict(ops(fill))
    for name, cfg in PIPELINES.items():
        aug = build_augment(AugmentConfig(**cfg), MEAN)
        benches[name] = lambda x, g, aug=aug: aug(
            x, generator=g, epoch=1, indices=torch.arange(x.shape[0], device=x.device))

    results = {}
    width = max(len(name) for name in benches)
    print(f"{'op':<{width}}  median ms  min ms   (batch {args.batch}, {device})")
    for name, fn in benches.items():
        results[name] = time_op(fn, x, g, args.warmup, args.repeats)
        print(f"{name:<{width}}  {results[name]['median_ms']:9.2f}  {results[name]['min_ms']:6.2f}")

    if args.json:
        if device.type == "cuda":
            hardware = torch.cuda.get_device_name(device)
        else:
            hardware = platform.processor() or platform.machine()
        record = {
            "benchmark": "augment_speed", "cifarkit": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "hardware": hardware,
            "threads": torch.get_num_threads(), "batch": args.batch, "repeats": args.repeats, "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
