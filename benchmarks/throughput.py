"""Training throughput of a recipe through the real loader and training step, and the share of
step time spent preparing batches (gather, per-image augmentation, normalization, mixing).

    python benchmarks/throughput.py --recipe seed002 --batch 128 512 --device cpu \
        --json benchmarks/results/throughput-seed002-cpu.json

Images are random uint8 arrays of CIFAR's shape: the cost of every op used here does not depend on
pixel values. Each configuration runs `--warmup` untimed steps, then `--steps` timed ones, with the
device synchronized around each phase.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cifarkit.config import Recipe, load_recipe, recipe_to_dict
from cifarkit.data.cifar import CifarArrays
from cifarkit.data.loader import CIFAR10_MEAN, CIFAR10_STD
from cifarkit.data.prepare import PreparedData
from cifarkit.device import resolve_device, synchronize
from cifarkit.errors import ConfigError
from cifarkit.exits import run_command
from cifarkit.experiment import Experiment
from cifarkit.fsio import check_can_write, write_json
from cifarkit.runinfo import run_record


def random_data(n: int, n_val: int) -> PreparedData:
    """n random training images of CIFAR's shape and n_val held out (which the timed steps never
    touch, but callbacks that validate need), 10 classes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n + n_val, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n + n_val)
    arrays = CifarArrays(images, labels, images[:1], labels[:1], [str(i) for i in range(10)], "random")
    return PreparedData(arrays, np.arange(n), np.arange(n, n + n_val), CIFAR10_MEAN, CIFAR10_STD)


def random_trainer(recipe: Recipe, device: torch.device, batches: int, epoch: int = 0):
    """A trainer for `recipe` that writes nothing, on `batches` batches of random images, and an
    iterator over the batches of epoch `epoch` (0-based). The model and the loader are set to that
    epoch as the training loop sets them: its image size (augment.resize_schedule) and, for
    fastnet, whether the whitening bias still learns."""
    if not 0 <= epoch < recipe.train.epochs:
        raise ConfigError(f"epoch {epoch} is not one of the recipe's epochs 0-{recipe.train.epochs - 1}")
    experiment = Experiment(recipe, device=device, log=lambda m: None)
    experiment.data = random_data(recipe.train.batch_size * batches, 100 if recipe.data.val_size else 0)
    trainer = experiment.build_trainer(run=None, progress=False)
    trainer.model.set_epoch(epoch)
    trainer.train_loader.set_epoch(epoch)
    return trainer, iter(trainer.train_loader)


def train_step(trainer, x, y, index: int) -> None:
    """One optimizer step on the batch (x, y), numbered `index` within epoch 0, as the loop runs it."""
    trainer._step(x, y, 0, index)
    trainer.state.step += 1


def timed_step(trainer, x, y, index: int) -> tuple[float, int]:
    """`train_step` on the CPU: its seconds and the process's minor page faults during it (memory
    mapped afresh and touched for the first time: large tensors allocated every step)."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    train_step(trainer, x, y, index)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def measure(recipe_name: str, batch: int, device: torch.device, steps: int, warmup: int) -> dict:
    recipe = load_recipe(recipe_name, [f"train.batch_size={batch}", f"device={device.type}"])
    trainer, batches = random_trainer(recipe, device, steps + warmup)
    loader = trainer.train_loader
    prep, step = [], []
    for i in range(steps + warmup):
        synchronize(device)
        t0 = time.perf_counter()
        x, y = next(batches)
        synchronize(device)
        t1 = time.perf_counter()
        train_step(trainer, x, y, i)
        synchronize(device)
        t2 = time.perf_counter()
        if i >= warmup:
            prep.append(t1 - t0)
            step.append(t2 - t1)
    total = sum(prep) + sum(step)
    augment = loader.augment
    return {"recipe": recipe_name, "batch_size": batch, "steps": steps,
            "images_per_second": batch * steps / total,
            "batch_preparation_share": sum(prep) / total,
            "median_prep_ms": 1000 * statistics.median(prep), "median_step_ms": 1000 * statistics.median(step),
            "augment": list(augment.op_names) if augment else [],
            "recipe_resolved": recipe_to_dict(recipe)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", nargs="+", default=["seed002", "seed004"])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.json:
        check_can_write(args.json)        # now, not after the minutes of timing
    device = resolve_device(args.device)
    results = []
    for name in args.recipe:
        for batch in args.batch:
            r = measure(name, batch, device, args.steps, args.warmup)
            results.append(r)
            print(f"{name} batch {batch}: {r['images_per_second']:.0f} images/s, batch preparation "
                  f"{100 * r['batch_preparation_share']:.1f}% of step time", flush=True)
    if args.json:
        write_json(args.json, {"results": results, **run_record(device)})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_command("throughput", main))
