"""Where a training step's time goes: each op's time over a few steps of a recipe, by op and shape,
and which oneDNN kernels its convolutions use.

    python benchmarks/profile_step.py --recipe fast94 --steps 3 --json benchmarks/results/profile-fast94-cpu.json
    python benchmarks/profile_step.py --recipe fast94 --clock dispatch --steps 4 --json ...
    python benchmarks/profile_step.py --recipe fast94 --set model.cpu_kernels=true --onednn

Runs the real training step (Experiment, Trainer) on random images of CIFAR's shape after two
warm-up steps, in epoch `--epoch` (0-based; fast94's epochs 3-8 are its 32x32 ones, with the
whitening bias frozen). `--clock profiler` (the default) uses torch.profiler, then times as many steps
again without it, so the JSON shows what profiling did to the step. `--clock dispatch` times each op
with `op_clock.OpClock` instead, on every other step, and the steps between without it: torch.profiler
slows some memory-bound ops of a CPU step several times over (benchmarks/README.md, "CPU speed").
`--onednn` runs one more step with ONEDNN_VERBOSE=1 in a child process and counts the convolution
primitives by implementation (e.g. brg_conv_fwd:avx512_core_amx for AMX tiles) and the reorders
between memory layouts.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from op_clock import OpClock  # noqa: E402
from throughput import random_trainer, timed_step  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from cifarkit.config import load_recipe  # noqa: E402
from cifarkit.exits import run_command  # noqa: E402
from cifarkit.fsio import check_can_write, write_json  # noqa: E402
from cifarkit.runinfo import run_record  # noqa: E402


def build(recipe_name: str, overrides: list[str], steps: int, epoch: int = 0):
    recipe = load_recipe(recipe_name, ["device=cpu", *overrides])
    return (recipe, *random_trainer(recipe, torch.device("cpu"), steps + 3, epoch))


def run_steps(trainer, batches, count: int, first: int) -> tuple[list[float], list[int]]:
    """Seconds and minor page faults of each of `count` training steps."""
    seconds, faults = [], []
    for i in range(first, first + count):
        x, y = next(batches)
        step_seconds, step_faults = timed_step(trainer, x, y, i)
        seconds.append(step_seconds)
        faults.append(step_faults)
    return seconds, faults


def op_rows(seconds: dict, calls: dict, total: float, steps: int) -> list[dict]:
    by_time = sorted(seconds, key=lambda op: -seconds[op])[:25]
    return [{"op": op, "self_ms_per_step": seconds[op] * 1000 / steps, "share": seconds[op] / total,
             "calls_per_step": calls[op] / steps} for op in by_time]


def shape_rows(seconds_by_shape: dict, total: float, steps: int) -> list[dict]:
    by_time = sorted(seconds_by_shape, key=lambda key: -seconds_by_shape[key])[:30]
    return [{"op": op, "shapes": shapes[:200], "self_ms_per_step": seconds_by_shape[op, shapes] * 1000 / steps,
             "share": seconds_by_shape[op, shapes] / total} for op, shapes in by_time]


def profile_steps(recipe_name: str, overrides: list[str], steps: int, epoch: int) -> dict:
    recipe, trainer, batches = build(recipe_name, overrides, steps * 2, epoch)
    warm, _ = run_steps(trainer, batches, 2, 0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        timed, timed_faults = run_steps(trainer, batches, steps, 2)
    unprofiled, unprofiled_faults = run_steps(trainer, batches, steps, 2 + steps)
    events = prof.key_averages()
    seconds = {e.key: e.self_cpu_time_total / 1e6 for e in events}
    calls = {e.key: e.count for e in events}
    by_shape = {(e.key, str(e.input_shapes)): e.self_cpu_time_total / 1e6
                for e in prof.key_averages(group_by_input_shape=True)}
    total = sum(seconds.values())
    return {
        "recipe": recipe_name, "overrides": overrides, "epoch": epoch, "clock": "profiler", "warmup_step_seconds": warm,
        "profiled_step_seconds": timed, "unprofiled_step_seconds": unprofiled,
        "profiled_step_minor_page_faults": timed_faults, "unprofiled_step_minor_page_faults": unprofiled_faults,
        "ops": op_rows(seconds, calls, total, steps), "ops_by_shape": shape_rows(by_shape, total, steps),
    }


def clock_steps(recipe_name: str, overrides: list[str], steps: int, epoch: int) -> dict:
    """Steps timed op by op (OpClock) alternating with plain steps, plain first."""
    recipe, trainer, batches = build(recipe_name, overrides, steps * 2, epoch)
    warm, _ = run_steps(trainer, batches, 2, 0)
    clock, plain, clocked, plain_faults, clocked_faults = OpClock(), [], [], [], []
    for i in range(2, 2 + 2 * steps, 2):
        seconds, faults = run_steps(trainer, batches, 1, i)
        plain += seconds
        plain_faults += faults
        with clock:
            seconds, faults = run_steps(trainer, batches, 1, i + 1)
        clocked += seconds
        clocked_faults += faults
    total = clock.total_seconds()
    return {
        "recipe": recipe_name, "overrides": overrides, "epoch": epoch, "clock": "dispatch", "warmup_step_seconds": warm,
        "profiled_step_seconds": clocked, "unprofiled_step_seconds": plain,
        "profiled_step_minor_page_faults": clocked_faults, "unprofiled_step_minor_page_faults": plain_faults,
        "op_seconds_share_of_profiled_steps": total / sum(clocked),
        "ops": op_rows(clock.seconds, clock.calls, total, steps),
        "ops_by_shape": shape_rows(clock.seconds_by_shape, total, steps),
    }


def onednn_kernels(recipe_name: str, overrides: list[str], epoch: int) -> dict:
    """Convolution and reorder primitives oneDNN ran in one training step, counted by implementation."""
    code = (f"import sys; sys.path[:0] = {[str(ROOT / 'src'), str(ROOT / 'benchmarks')]!r}\n"
            "from profile_step import build, run_steps\n"
            f"_, trainer, batches = build({recipe_name!r}, {overrides!r}, 1, {epoch!r})\n"
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast94")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--steps", type=int, default=3, help="steps measured (and as many without the clock)")
    parser.add_argument("--epoch", type=int, default=0,
                        help="time steps of this (0-based) epoch: its image size, its frozen parameters")
    parser.add_argument("--clock", choices=["profiler", "dispatch"], default="profiler",
                        help="torch.profiler, or op_clock.OpClock (each op's wall time; no profiler)")
    parser.add_argument("--onednn", action="store_true", help="also count oneDNN's kernels (ONEDNN_VERBOSE)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.json:
        check_can_write(args.json)        # now, not after the minutes of timing
    measure = profile_steps if args.clock == "profiler" else clock_steps
    result = measure(args.recipe, args.set, args.steps, args.epoch)
    if args.onednn:
        result["onednn_primitives_per_step"] = onednn_kernels(args.recipe, args.set, args.epoch)
    for with_or_without, key in (("with", "profiled"), ("without", "unprofiled")):
        print(f"steps {with_or_without} the {args.clock}: seconds {[round(s, 3) for s in result[f'{key}_step_seconds']]}, "
              f"minor page faults {result[f'{key}_step_minor_page_faults']}")
    for row in result["ops"][:15]:
        print(f"{row['self_ms_per_step']:8.1f} ms {100 * row['share']:5.1f}%  {row['op']}")
    for name, row in result.get("onednn_primitives_per_step", {}).items():
        print(f"{row['count']:5d} {row['ms']:9.1f} ms  {name}")
    if args.json:
        write_json(args.json, {**result, **run_record(torch.device("cpu"))})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_command("profile_step", main))
