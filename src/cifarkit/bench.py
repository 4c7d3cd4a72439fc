"""`cifarkit bench`: train a recipe over several seeds and write accuracy and timing as JSON.

Timing follows the speed-run records: the data is decoded and on the device before the clock
starts; the clock covers every training step and the final test-time-augmented evaluation, with
the device synchronized before each reading. A warm-up run (kernel selection, torch.compile) is
timed separately and reported on its own. A bench stopped by SIGINT/SIGTERM writes the seeds that
finished, marked partial, and exits 130/143.

Under torchrun every rank trains each seed (one data-parallel run) and rank 0 writes the JSON,
with the number of processes; `cifarkit bench --nproc N` (bench_scaling.py) launches them.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from cifarkit.augment.schedule import resize_size_at
from cifarkit.config import load_recipe, recipe_to_dict
from cifarkit.device import effective_precision, resolve_device, synchronize
from cifarkit.evaluate.metrics import accuracy
from cifarkit.experiment import Experiment
from cifarkit.fsio import check_can_write, write_json
from cifarkit.models.registry import build_model, flops_per_image
from cifarkit.runinfo import run_record
from cifarkit.stats import describe, one_sided_p_value
from cifarkit.train.distributed import World, join
from cifarkit.train.interrupt import Interrupted


def yardstick_precision(device: torch.device) -> str:
    """The precision of the matrix-multiply yardstick: the one `train.precision: auto` trains in on
    `device`, bf16 with native bf16 and fp32 elsewhere (an emulated bf16 multiply measures the
    emulation, under 1 GFLOP/s on an AVX2 CPU)."""
    return effective_precision("auto", device)


def yardstick_key(device: torch.device) -> str:
    """The benchmark JSON's key for the yardstick: bf16_matmul_gflops or fp32_matmul_gflops."""
    return f"{yardstick_precision(device)}_matmul_gflops"


def yardstick(result: dict) -> dict:
    """The {before, after} yardstick of a benchmark JSON, whichever precision it was taken in."""
    return result.get("bf16_matmul_gflops") or result["fp32_matmul_gflops"]


def matmul_gflops(device: torch.device, repeats: int = 5, *, precision: str | None = None,
                  n: int | None = None) -> float:
    """The machine's matrix-multiply speed in GFLOP/s (best of three rounds), by default in the
    yardstick's precision and size: a yardstick for comparing wall times across machines, and
    across the start and end of one long benchmark on a shared one. Training on these nets is
    mostly convolutions, which run at about this speed."""
    n = n or (2048 if device.type == "cpu" else 8192)
    dtype = torch.bfloat16 if (precision or yardstick_precision(device)) == "bf16" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    a @ b                                    # first call: kernel selection, allocation
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n ** 3 / best / 1e9


def time_one_seed(experiment: Experiment) -> dict:
    """Train and evaluate one seed; returns accuracy and the seconds of each phase."""
    device = experiment.device
    trainer = experiment.build_trainer(run=None, progress=False)
    synchronize(device)
    start = time.perf_counter()
    summary = trainer.fit()
    synchronize(device)
    trained = time.perf_counter()
    probs = experiment.predict(trainer.model, "test")
    synchronize(device)
    end = time.perf_counter()
    acc = accuracy(probs.numpy(), experiment.data.arrays.test_labels)
    return {"seed": experiment.recipe.seed, "accuracy": acc, "train_seconds": trained - start,
            "eval_seconds": end - trained, "seconds": end - start, "steps": summary["steps"]}


class BenchInterrupted(Interrupted):
    """A signal stopped the bench; the seeds that finished were written, marked partial."""


def run_benchmark(recipe_name: str, *, seeds: int = 3, overrides: list[str] | None = None, data_dir=None,
                  out=None, first_seed: int = 0, log: Callable[[str], None] = print) -> dict:
    base = load_recipe(recipe_name, overrides)
    with join(resolve_device(base.device)) as world:
        return _run_benchmark(base, world, seeds=seeds, data_dir=data_dir, out=out, first_seed=first_seed,
                              log=log if world.is_main else (lambda message: None))


def _run_benchmark(base, world: World, *, seeds: int, data_dir, out, first_seed: int,
                   log: Callable[[str], None]) -> dict:
    experiment = Experiment(base, log=log, world=world)
    device = experiment.device
    world.together(experiment.check)
    record = run_record(device)          # taken before the runs: the commit of the code that runs
    record["processes"] = world.size
    world.together(lambda: experiment.load_data(data_dir) if world.local_rank == 0 else None)
    world.together(lambda: experiment.load_data(data_dir))
    experiment = experiment.with_recipe(base, log=lambda m: None)     # no per-seed model and augment lines
    suffix = f"-x{world.size}" if world.distributed else ""
    out = Path(out) if out else Path("benchmarks") / "results" / f"{base.name}-{device.type}{suffix}.json"
    write = write_json if world.is_main else (lambda path, data: None)
    if world.is_main:
        check_can_write(out)            # before the minutes of training whose result it will hold

    speed_before = matmul_gflops(device)
    warm_epochs = warmup_epochs(base)
    warm = experiment.with_recipe(dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=warm_epochs)))
    synchronize(device)
    t0 = time.perf_counter()
    time_one_seed(warm)
    warmup_seconds = time.perf_counter() - t0
    log(f"warm-up ({warm_epochs} epoch{'s' * (warm_epochs > 1)}, compile and kernel selection): {warmup_seconds:.1f}s")

    runs = []
    for seed in range(first_seed, first_seed + seeds):
        try:
            result = time_one_seed(experiment.with_seed(seed))
        except Interrupted as stop:
            partial = _result(base, experiment, runs, warmup_seconds, speed_before, None, record)
            write(out, {**partial, "partial": True, "interrupted_at_seed": seed})
            done = ", ".join(str(r["seed"]) for r in runs) or "none"
            raise BenchInterrupted(stop.signum, f"bench stopped during seed {seed}; finished seeds: {done}; "
                                                f"wrote {out} (marked partial)") from None
        runs.append(result)
        log(f"seed {seed}: accuracy {result['accuracy']:.4f} in {result['seconds']:.2f}s "
            f"(train {result['train_seconds']:.2f}s, eval {result['eval_seconds']:.2f}s)")

    result = _result(base, experiment, runs, warmup_seconds, speed_before, matmul_gflops(device), record)
    write(out, result)
    a, s = result["accuracy"], result["seconds"]
    processes = f" x {world.size} processes" if world.distributed else ""
    log(f"{base.name} on {device}{processes}: accuracy {a['mean']:.4f} +- {a['std']:.4f} over {a['n']} seeds, "
        f"median {s['median']:.2f}s; wrote {out}")
    return result


def warmup_epochs(recipe) -> int:
    """Epochs the warm-up run trains: one, or with torch.compile every epoch up to the last at
    which the graph changes (FastNet's whitening bias freezes, progressive resizing changes the
    image size), so no recompilation happens inside a timed seed."""
    if not recipe.train.compile:
        return 1
    changes = [until for _, until in recipe.augment.resize_schedule]
    changes.append(getattr(recipe.model, "whiten_bias_epochs", 0))
    return max(1, min(recipe.train.epochs, 1 + max(changes)))


def _result(base, experiment: Experiment, runs: list[dict], warmup_seconds: float, speed_before: float,
            speed_after: float | None, record: dict) -> dict:
    """The bench JSON for the runs so far."""
    accs = [r["accuracy"] for r in runs]
    times = [r["seconds"] for r in runs]
    data = experiment.data
    images_per_epoch = len(data.train_idx) // base.train.batch_size * base.train.batch_size
    model = build_model(base.model, data.num_classes)
    fwd_flops = flops_per_image(model)
    result = {
        "recipe": base.name, "device": str(experiment.device), "seeds": [r["seed"] for r in runs], "runs": runs,
        "accuracy": describe(accs), "seconds": describe(times),
        "target_accuracy": base.target_accuracy,
        "p_value_mean_above_target": (one_sided_p_value(accs, base.target_accuracy)
                                      if base.target_accuracy is not None else None),
        "warmup_seconds": warmup_seconds, "warmup_epochs": warmup_epochs(base),
        "forward_flops_per_image": fwd_flops,
        "timing": "first training step to end of the final TTA evaluation; data decoded and on the device",
        "precision": effective_precision(base.train.precision, experiment.device),
        yardstick_key(experiment.device): {"before": speed_before, "after": speed_after},
        "recipe_resolved": recipe_to_dict(base), **record,
    }
    if runs:
        train_time = statistics.median(r["train_seconds"] for r in runs)
        train_flops = 3 * images_per_epoch * sum(_epoch_flops_per_image(model, base, epoch, fwd_flops)
                                                 for epoch in range(base.train.epochs))
        result["train_images_per_second"] = images_per_epoch * base.train.epochs / train_time
        result["training_flops_per_second"] = train_flops / train_time
    return result


def _epoch_flops_per_image(model, recipe, epoch: int, native: int) -> int:
    """Forward FLOPs per training image in `epoch`: progressive resizing trains early epochs smaller."""
    size = resize_size_at(recipe.augment.resize_schedule, epoch)
    return native if size is None else flops_per_image(model, (1, 3, size, size))
