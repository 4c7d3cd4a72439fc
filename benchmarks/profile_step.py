"""Where a training step's time goes: torch.profiler over a few steps of a recipe, by op and shape,
and which oneDNN kernels its convolutions use.

    python benchmarks/profile_step.py --recipe fast94 --steps 3 --json benchmarks/results/profile-fast94-cpu.json
    python benchmarks/profile_step.py --recipe fast94 --set model.cpu_kernels=true --onednn

Runs the real training step (Experiment, Trainer) on random images of CIFAR's shape after two
warm-up steps. `--onednn` runs one more step with ONEDNN_VERBOSE=1 in a child process and counts
the convolution primitives by implementation (e.g. brg_conv_fwd:avx512_core_amx for AMX tiles) and
the reorders between memory layouts.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from throughput import random_trainer, train_step  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from cifarkit.config import load_recipe  # noqa: E402
from cifarkit.exits import run_command  # noqa: E402
from cifarkit.fsio import check_can_write, write_json  # noqa: E402
from cifarkit.runinfo import run_record  # noqa: E402


def build(recipe_name: str, overrides: list[str], steps: int):
    recipe = load_recipe(recipe_name, ["device=cpu", *overrides])
    return (recipe, *random_trainer(recipe, torch.device("cpu"), steps + 3))


def run_steps(trainer, batches, count: int, first: int) -> list[float]:
    seconds = []
    for i in range(first, first + count):
        x, y = next(batches)
        start = time.perf_counter()
        train_step(trainer, x, y, i)
        seconds.append(time.perf_counter() - start)
    return seconds


def profile_steps(recipe_name: str, overrides: list[str], steps: int) -> dict:
    recipe, trainer, batches = build(recipe_name, overrides, steps)
    warm = run_steps(trainer, batches, 2, 0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        timed = run_steps(trainer, batches, steps, 2)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    by_op = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    by_shape = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
    return {
        "recipe": recipe_name, "overrides": overrides, "warmup_step_seconds": warm,
        "profiled_step_seconds": timed,
        "ops": [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                 "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in by_op[:25]],
        "ops_by_shape": [{"op": e.key, "shapes": str(e.input_shapes)[:200],
                          "self_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                          "share": e.self_cpu_time_total / total} for e in by_shape[:30]],
    }


def onednn_kernels(recipe_name: str, overrides: list[str]) -> dict:
    """Convolution and reorder primitives oneDNN ran in one training step, counted by implementation."""
    code = (f"import sys; sys.path[:0] = {[str(ROOT / 'src'), str(ROOT / 'benchmarks')]!r}\n"
            "from profile_step import build, run_steps\n"
            f"_, trainer, batches = build({recipe_name!r}, {overrides!r}, 1)\n"
            "run_steps(trainer, batches, 2, 0)\nprint('=== measured step ===', flush=True)\n"
            "run_steps(trainer, batches, 1, 2)\n")
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    step = out.split("=== measured step ===", 1)[-1]
    counts: collections.Counter = collections.Counter()
    exec_ms: collections.Counter = collections.Counter()
    for line in step.splitlines():
        # onednn_verbose,v1,primitive,exec,cpu,<primitive>,<implementation>,<prop_kind>,...,<exec_time ms>
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or len(fields) < 9 or fields[2:4] != ["primitive", "exec"]:
            continue
        key = f"{fields[5]} {fields[6]} {re.sub(r'[^a-z_]', '', fields[7])}"
        counts[key] += 1
        exec_ms[key] += float(fields[-1]) if re.fullmatch(r"[0-9.]+", fields[-1]) else 0.0
    return {key: {"count": count, "ms": round(exec_ms[key], 2)} for key, count in counts.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast94")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--onednn", action="store_true", help="also count oneDNN's kernels (ONEDNN_VERBOSE)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.json:
        check_can_write(args.json)        # now, not after the minutes of timing
    result = profile_steps(args.recipe, args.set, args.steps)
    if args.onednn:
        result["onednn_primitives_per_step"] = onednn_kernels(args.recipe, args.set)
    print(f"step seconds: {[round(s, 3) for s in result['profiled_step_seconds']]}")
    for row in result["ops"][:15]:
        print(f"{row['self_ms_per_step']:8.1f} ms {100 * row['share']:5.1f}%  {row['op']}")
    for name, row in result.get("onednn_primitives_per_step", {}).items():
        print(f"{row['count']:5d} {row['ms']:9.1f} ms  {name}")
    if args.json:
        write_json(args.json, {**result, **run_record(torch.device("cpu"))})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_command("profile_step", main))
