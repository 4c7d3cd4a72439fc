"""The plan of benchmarks/gpu_check.py: its steps, their durations estimated from FLOPs and the
device's speed, and fitting them into a time budget.

Each estimate is forward FLOPs per image x 3 (forward and backward) x images, at an assumed share
of the device's bf16 peak, plus fixed costs per piece of a batch, per process and per compile.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cifarkit.config import load_recipe
from cifarkit.fsio import write_json

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s; matched in order.
GPU_PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}
# Share of that peak cifarkit's training reaches: an assumption. For these very networks airbench94's
# and airbench95's published A100 times imply 29% and 42% (forward FLOPs x 3 x 50,000 x epochs /
# (seconds x 312e12)); cifarkit's step is less tuned.
ASSUMED_UTILISATION = 0.25
# Assumed fixed costs, seconds: each forward/backward piece on a GPU (kernel launches, host syncs),
# a process start (Python, torch, CUDA context), one torch.compile of a graph, evaluation plots,
# and `pytest -m cuda` (about a minute of tiny runs plus one compile).
PIECE_S = {"cuda": 0.002, "cpu": 0.0}
START_S, COMPILE_S, PLOTS_S, PYTEST_S = 15.0, 30.0, 15.0, 120.0
TTA_VIEWS = {"none": 1, "flip": 2, "flip_translate": 6, "view8": 8}
# torch.compile where it pays: fast94's 25 seeds share its one-off cost (about a minute: the graph,
# then again when FastNet's whitening bias freezes at epoch 3, inside the first timed seed), and its
# 250-image pieces are where fusing small kernels helps most. fast95 (5 seeds) and fast96 (1) would
# spend that minute of a 15-minute GPU window for few seeds, and fast96's only seed would carry the
# recompile in its time.
COMPILE_FOR = ("fast94",)
BENCHES = {"fast94": 25, "fast95": 5, "fast96": 1}
# Dry runs: 1 epoch on 64 images, and the same recipes with small networks.
TINY = ["train.epochs=1", "data.train_subset=64", "train.batch_size=32"]
TINY_MODELS = {"fastnet": {"widths": [8, 16, 16]},
               "seed002": {"stem_width": 8, "widths": [8, 16, 32], "blocks": [1, 1, 1]},
               "seed004": {"stem_width": 8, "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1]}}


@dataclass
class Step:
    name: str                  # file stem in DIR
    kind: str                  # pytest | bench | throughput | train
    fixed_s: float
    priority: int              # the lowest is skipped first
    args: list[str] = field(default_factory=list)   # the step's own command-line options
    seeds: int = 0             # benches only
    full_seeds: int = 0
    per_seed_s: float = 0.0
    optional: bool = False     # runs only if everything else fits at full size
    status: str = "planned"
    note: str = ""
    seconds: float | None = None
    returncode: int | None = None

    @property
    def estimate_s(self) -> float:
        return self.fixed_s + self.seeds * self.per_seed_s


def skip(step: Step, why: str) -> None:
    step.status, step.note = "skipped", why


def fit_plan(steps: list[Step], budget_s: float) -> None:
    """Drop optional steps unless all fits, then take seeds from the bench that spends most on them
    (down to 2), then skip steps, lowest priority first, until the planned total fits `budget_s`."""
    def total() -> float:
        return sum(s.estimate_s for s in steps if s.status == "planned")
    for step in steps:
        if step.optional and total() > budget_s:
            skip(step, f"as time allows: the plan needs {total():.0f} s with it, {budget_s:.0f} s are left")
    while total() > budget_s and any(s.status == "planned" for s in steps):
        reducible = [s for s in steps if s.status == "planned" and s.seeds > min(2, s.full_seeds)]
        if reducible:
            biggest = max(reducible, key=lambda s: s.seeds * s.per_seed_s)
            biggest.seeds -= 1
            biggest.note = f"{biggest.seeds} of {biggest.full_seeds} seeds, to fit the budget"
        else:
            victim = min((s for s in steps if s.status == "planned"), key=lambda s: s.priority)
            skip(victim, f"does not fit: the plan needs {total():.0f} s, {budget_s:.0f} s are left")
            for step in steps:             # the time it frees goes back to the other benches' seeds first
                if step.status == "planned" and step.seeds:
                    step.seeds, step.note = step.full_seeds, ""


# --- estimates -----------------------------------------------------------------------------------

@dataclass
class Speed:
    flops: float               # assumed training FLOP/s
    piece_s: float
    load_s: float              # measured: reading and checking the data once


def train_s(recipe, n_train: int, fwd: int, speed: Speed) -> float:
    t = recipe.train
    steps = n_train // t.batch_size * t.epochs
    pieces = steps * math.ceil(t.batch_size / (t.micro_batch or t.batch_size))
    return 3 * fwd * steps * t.batch_size / speed.flops + pieces * speed.piece_s


def infer_s(n: int, fwd: int, views: float, batch: int, speed: Speed) -> float:
    return views * (n * fwd / speed.flops + math.ceil(n / batch) * speed.piece_s)


def tta_views(recipe) -> float:
    """Views per test image; selective TTA gives all of them to `tta_fraction` of the images only."""
    views = TTA_VIEWS[recipe.eval.tta]
    return views if views <= 2 else 2 + recipe.eval.tta_fraction * (views - 2)


def train_size(recipe, counts: dict) -> int:
    n = counts["train"] - recipe.data.val_size
    return min(n, recipe.data.train_subset or n)


def make_plan(args, models: dict, counts: dict, speed: Speed) -> list[Step]:
    """The four steps at full size (or tiny, for a dry run), each with its estimate and command options."""
    checked = ["data.download=false"] + ([] if args.verified else ["data.verify=false"])
    pytest = Step("pytest-cuda", "pytest", 2 * START_S if args.dry_run else PYTEST_S, priority=5)
    benches = [plan_bench(name, seeds, priority, args, checked, models, counts, speed)
               for priority, (name, seeds) in zip((3, 2, 1), BENCHES.items())]
    return [pytest, *benches, plan_throughput(args, models, speed), plan_train(args, checked, models, counts, speed)]


def plan_bench(name: str, seeds: int, priority: int, args, checked: list[str], models: dict, counts: dict,
               speed: Speed) -> Step:
    """`cifarkit bench`: start, data, a one-epoch warm-up (and compiles) once, then training and TTA per seed."""
    compile_on = name in COMPILE_FOR and args.device == "cuda"
    sets = checked + (tiny("fastnet") + ["train.micro_batch=16"] if args.dry_run else [])
    sets += ["train.compile=true"] if compile_on else []
    recipe, fwd, seeds = load_recipe(name, sets), models[name]["flops"], 1 if args.dry_run else seeds
    n_train = train_size(recipe, counts)
    test = infer_s(counts["test"], fwd, tta_views(recipe), recipe.eval.batch_size, speed)
    warmup = train_s(load_recipe(name, sets + ["train.epochs=1"]), n_train, fwd, speed) + test
    return Step(f"bench-{name}", "bench", START_S + speed.load_s + warmup + 2 * COMPILE_S * compile_on, priority,
                ["--recipe", name, "--data-dir", str(args.data_dir), "--device", args.device, *flag("--set", sets)],
                seeds, seeds, train_s(recipe, n_train, fwd, speed) + test)


def plan_throughput(args, models: dict, speed: Speed) -> Step:
    """benchmarks/throughput.py: 3 warm-up and 10 timed steps per recipe and batch size."""
    batches, steps = ((8,), 1) if args.dry_run else ((128, 512), 13)
    seconds = sum(steps * (3 * models[r]["flops"] * b / speed.flops + speed.piece_s)
                  for r in ("seed002", "seed004") for b in batches)
    recipes = write_tiny_recipes(args.out) if args.dry_run else ["seed002", "seed004"]
    return Step("throughput", "throughput", START_S + seconds, 4, [
        "--recipe", *recipes, "--batch", *map(str, batches), "--device", args.device,
        *(["--steps", "1", "--warmup", "0"] if args.dry_run else [])])


def plan_train(args, checked: list[str], models: dict, counts: dict, speed: Speed) -> Step:
    """`cifarkit train --recipe seed002`: training with validation each epoch, then the evaluation of
    its final and best weights (which reads the data again) and its plots."""
    sets = checked + (tiny("seed002") + ["data.val_size=100"] if args.dry_run else [])
    recipe, fwd = load_recipe("seed002", sets), models["seed002"]["flops"]
    n_val, batch = recipe.data.val_size, recipe.eval.batch_size
    validate = recipe.train.epochs * infer_s(n_val, fwd, 1, batch, speed)
    evaluate = 2 * (infer_s(n_val, fwd, 1, batch, speed) + infer_s(counts["test"], fwd, 1, batch, speed))
    seconds = 2 * (START_S + speed.load_s) + train_s(recipe, train_size(recipe, counts), fwd, speed) + validate
    run = args.runs_dir / f"gpu-check-{args.out.name}-seed002"
    return Step("train-seed002", "train", seconds + evaluate + PLOTS_S, 0, [
        "--recipe", "seed002", "--data-dir", str(args.data_dir), "--device", args.device, "--out", str(run),
        *flag("--set", sets)], optional=True)


def flag(name: str, values: list[str]) -> list[str]:
    return [a for v in values for a in (name, v)]


def tiny(model: str) -> list[str]:
    return TINY + [f"model.{key}={json.dumps(value)}" for key, value in TINY_MODELS[model].items()]


def write_tiny_recipes(out: Path) -> list[str]:
    """throughput.py takes recipe files: seed002 and seed004 with small networks, for dry runs."""
    for name in ("seed002", "seed004"):
        write_json(out / f"dry-run-{name}.yaml", {"base": name, "name": f"{name}-small", "model": TINY_MODELS[name]})
    return [str(out / f"dry-run-{name}.yaml") for name in ("seed002", "seed004")]     # JSON is YAML


def peak_flops(device: torch.device) -> tuple[float, str]:
    if device.type == "cpu":
        from cifarkit.bench import matmul_gflops, yardstick_precision
        return (matmul_gflops(device) * 1e9,
                f"cpu: cifarkit's {yardstick_precision(device)} matmul yardstick, measured here")
    name = torch.cuda.get_device_name(device)
    for key, peak in GPU_PEAK_BF16.items():
        if all(word in name for word in key.split()):
            return peak, f"{name}: {key}'s published dense bf16 peak"
    return GPU_PEAK_BF16["A100"], f"{name}: not in the table; A100's published dense bf16 peak assumed"
