"""Time one training step of a recipe's variants in one process, alternating, so drift cancels.

    python benchmarks/step_ab.py --recipe fast94 --variant plain= \
        --variant kernels=model.cpu_kernels=true --json benchmarks/results/step-ab-cpu-kernels.json

Each variant is `NAME=OVERRIDE[,OVERRIDE...]` (recipe overrides, as `--set`). Every variant gets its
own trainer on the same random images of CIFAR's shape; each round runs one step of each variant in
turn, and the first round (kernel selection, compilation) is not counted. This measures the step
alone: no data loading, validation or evaluation (benchmarks/ab_bench.py times whole runs). The
matrix-multiply yardstick (bf16; fp32 on a CPU without native bf16) is taken before and after, and
the minor page faults of each step (train/cpu_setup.py keeps freed memory so that steps do not
fault in fresh pages).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from throughput import random_trainer, timed_step  # noqa: E402

from cifarkit.bench import matmul_gflops, yardstick_key  # noqa: E402
from cifarkit.config import load_recipe  # noqa: E402
from cifarkit.exits import run_command  # noqa: E402
from cifarkit.fsio import check_can_write, write_json  # noqa: E402
from cifarkit.runinfo import run_record  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME=OVERRIDE[,OVERRIDE...]; commas inside brackets belong to a value ('model.widths=[8,16,16]')."""
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant needs NAME=OVERRIDES (overrides may be empty), got {text!r}")
    parts, depth, current = [], 0, ""
    for char in overrides:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return name, [o for o in [*parts, current] if o]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast94")
    parser.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDE[,OVERRIDE...]")
    parser.add_argument("--rounds", type=int, default=6, help="rounds counted, after one warm-up round")
    parser.add_argument("--epoch", type=int, default=0,
                        help="time steps of this (0-based) epoch: its image size, its frozen parameters")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    check_can_write(args.json)            # now, not after the minutes of timing
    variants = dict(parse_variant(v) for v in args.variant)
    trainers = {}
    for name, overrides in variants.items():
        recipe = load_recipe(args.recipe, ["device=cpu", *overrides])
        trainers[name] = random_trainer(recipe, torch.device("cpu"), args.rounds + 2, args.epoch)
    before = matmul_gflops(torch.device("cpu"))
    seconds = {name: [] for name in variants}
    faults = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):
        for name, (trainer, batches) in trainers.items():
            x, y = next(batches)
            step_seconds, step_faults = timed_step(trainer, x, y, round_)
            if round_:
                seconds[name].append(step_seconds)
                faults[name].append(step_faults)
    after = matmul_gflops(torch.device("cpu"))
    first = next(iter(variants))
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    result = {"recipe": args.recipe, "variants": variants, "epoch": args.epoch, "rounds": args.rounds,
              "minor_page_faults_per_step": faults,
              "threading_environment": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "KMP_", "GOMP_"))},
              "step_seconds": seconds, "median_step_seconds": medians,
              f"ratio_to_{first}": {name: m / medians[first] for name, m in medians.items()},
              yardstick_key(torch.device("cpu")): {"before": before, "after": after}, **run_record("cpu")}
    write_json(args.json, result)
    for name, m in medians.items():
        print(f"{name}: median step {m:.3f} s ({m / medians[first]:.3f} x {first})")


if __name__ == "__main__":
    sys.exit(run_command("step_ab", main))
