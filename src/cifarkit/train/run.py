"""`cifarkit train`: a recipe in, a complete run directory out."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from cifarkit.augment.pipeline import build_augment, describe_augment
from cifarkit.config import Recipe
from cifarkit.data.prepare import PreparedData, make_loader, prepare_data
from cifarkit.fsio import read_jsonl, write_json, write_text
from cifarkit.models.fastnet import FastNet, init_whitening
from cifarkit.models.registry import build_model, check_budget
from cifarkit.rundir import RunDir, check_writable
from cifarkit.runinfo import resolve_device, run_record
from cifarkit.seeding import seed_everything
from cifarkit.train.checkpoint import load_checkpoint
from cifarkit.train.cpu_setup import prepare_cpu_training
from cifarkit.train.engine import Trainer


def command_line(argv: list[str]) -> str:
    """The command as typed, with the program's name instead of its path: run.json is meant to be
    shared, and where cifarkit is installed says nothing about the run."""
    return " ".join([Path(argv[0]).name, *argv[1:]]) if argv else ""


def default_run_dir(recipe: Recipe, runs_root: str | Path = "runs") -> Path:
    return Path(runs_root) / f"{recipe.name}-s{recipe.seed}"


def build_trainer(recipe: Recipe, data: PreparedData, run: RunDir, device: torch.device,
                  log: Callable[[str], None], persist: bool = True) -> Trainer:
    """Model, loaders and trainer for `recipe`; the model is checked against the budget first."""
    seed_everything(recipe.seed)
    if device.type == "cpu":
        prepare_cpu_training()
    model = build_model(recipe.model, data.num_classes)
    n_params = check_budget(model, recipe.budget, recipe.allow_over_budget)
    log(f"model {recipe.model.arch}: {n_params:,} parameters (budget {recipe.budget:,})")
    arrays = data.arrays
    augment = build_augment(recipe.augment, data.mean, seed=recipe.seed)
    log("augmentation: " + (", ".join(describe_augment(recipe.augment)) or "none"))
    train_loader = make_loader(arrays.train_images[data.train_idx], arrays.train_labels[data.train_idx], recipe,
                               device, mean=data.mean, std=data.std, train=True, augment=augment)
    val_loader = None
    if len(data.val_idx):
        val_loader = make_loader(arrays.train_images[data.val_idx], arrays.train_labels[data.val_idx], recipe,
                                 device, mean=data.mean, std=data.std, train=False)
    if isinstance(model, FastNet):      # the patch-whitening stem is computed from training images
        first = make_loader(arrays.train_images[data.train_idx[:5000]], arrays.train_labels[data.train_idx[:5000]],
                            recipe, torch.device("cpu"), mean=data.mean, std=data.std, train=False, batch_size=5000)
        init_whitening(model, next(iter(first))[0].float().contiguous(), eps=recipe.model.whiten_eps)
    memory_format = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    return Trainer(recipe, model, train_loader, val_loader, run, device, log=log,
                   num_classes=data.num_classes, normalization=data.normalization(), persist=persist)


def train_run(recipe: Recipe, run_dir: str | Path, *, data_dir=None, resume: bool = False, force: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Train `recipe` into `run_dir` (or continue the run there); returns the training summary."""
    run = RunDir(run_dir)
    device = resolve_device(recipe.device)
    if resume:
        diffs = run.check_resume(recipe, force)
        if diffs:
            log("resuming with a changed recipe (--force): " + "; ".join(diffs))
        check_writable(run.root)
        run.remove_stale_temporaries()
    else:
        run.check_new()            # refuse early, before any data is read
        check_writable(run.root)
    data = prepare_data(recipe.data, data_dir, log=log)
    trainer = build_trainer(recipe, data, run, device, log)
    if not resume:
        run.create(recipe)         # only now: a failed start leaves no half-made run behind
    if resume and run.last.exists():
        trainer.load_state_dict(load_checkpoint(run.last, map_location=device))
        st = trainer.state
        _truncate_metrics(run, st.epoch)
        log(f"resumed {run.root} at epoch {st.epoch + 1}" + (f", batch {st.batch}" if st.batch else ""))
    elif resume:
        log(f"{run.root} has no checkpoint yet; starting from the beginning")
        _truncate_metrics(run, 0)
    record = run_record(device, command=command_line(sys.argv), data_source=data.arrays.source,
                        seed=recipe.seed, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(run.run_json, record)
    summary = trainer.fit()
    write_json(run.run_json, {**record, "train": summary})
    return summary


def _truncate_metrics(run: RunDir, epochs_done: int) -> None:
    """Drop metric lines of epochs the checkpoint does not contain (written after it, before a crash)."""
    kept = [r for r in read_jsonl(run.metrics) if r.get("epoch", 0) <= epochs_done]
    write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in kept))
