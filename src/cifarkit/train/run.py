"""`cifarkit train`: a recipe in, a complete run directory out (trained, then evaluated in-process)."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from cifarkit.config import Recipe
from cifarkit.device import effective_precision, resolve_device
from cifarkit.experiment import Experiment
from cifarkit.fsio import check_folder_writable, write_json
from cifarkit.rundir import RunDir
from cifarkit.runinfo import run_record
from cifarkit.train.checkpoint import load_checkpoint
from cifarkit.train.checkpoint_schema import validate_training_checkpoint
from cifarkit.train.distributed import join


def command_line(argv: list[str]) -> str:
    """The command as typed, with the program's name instead of its path: run.json is meant to be
    shared, and where cifarkit is installed says nothing about the run. `python -m cifarkit` (how
    torchrun starts each rank) is named `cifarkit` too, not after its __main__.py."""
    if not argv:
        return ""
    name = Path(argv[0]).name
    return " ".join(["cifarkit" if name == "__main__.py" else name, *argv[1:]])


def default_run_dir(recipe: Recipe, runs_root: str | Path = "runs") -> Path:
    return Path(runs_root) / f"{recipe.name}-s{recipe.seed}"


def train_run(recipe: Recipe, run_dir: str | Path, *, data_dir=None, resume: bool = False, force: bool = False,
              evaluate: bool = True, device: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Train `recipe` into `run_dir` (or continue the run there), then evaluate it on the test set
    unless `evaluate` is False; returns the training summary.

    Everything that can be refused without the data is refused before any file is written; the
    run directory is locked against a second process for the whole command. Under torchrun every
    rank trains; rank 0 alone writes the run directory, prints, and evaluates.
    """
    with join(resolve_device(device or recipe.device)) as world:
        main = world.is_main
        experiment = Experiment(recipe, world=world, log=log if main else _quiet)
        world.together(experiment.check)
        run = RunDir(run_dir)
        fresh_folder = main and not run.root.exists()
        with run.lock() if main else contextlib.nullcontext():
            try:
                trainer = _start(run, experiment, recipe, data_dir, resume, force, experiment.log)
            except BaseException:
                if fresh_folder and not resume and not run.exists():
                    run.remove_empty()          # a refused start leaves nothing behind for the next try
                raise
            record = run_record(experiment.device, command=command_line(sys.argv),
                                data_source=experiment.data.arrays.source, seed=recipe.seed,
                                precision=effective_precision(recipe.train.precision, experiment.device),
                                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            if world.distributed:
                record["processes"] = {"world_size": world.size, "backend": torch.distributed.get_backend()}
            if main:
                write_json(run.run_json, record)
            summary = trainer.fit()
            if main:
                write_json(run.run_json, {**record, "train": summary})
            if evaluate and main:
                from cifarkit.evaluate.report import evaluate_run
                evaluate_run(run.root, experiment=experiment, models=trainer.trained_models(), log=log, locked=True)
    return summary


def _quiet(message: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for the run."""


def _start(run: RunDir, experiment: Experiment, recipe: Recipe, data_dir, resume: bool, force: bool,
           log: Callable[[str], None]):
    """Check the run directory, read the data, build the trainer; restore the checkpoint on a
    resume. Nothing is written into the directory before the data is read and the trainer built.

    With several processes each stage ends with every rank knowing whether all of them got
    through it (`World.together`), so a rank that fails never leaves the others waiting."""
    world = experiment.world
    main = world.is_main

    def check_run_dir():
        if not main:
            return
        if resume:
            diffs = run.check_resume(recipe, force)
            if diffs:
                log("resuming with a changed recipe (--force): " + "; ".join(diffs))
            check_folder_writable(run.root)
            run.remove_stale_temporaries()
        else:
            run.check_new()            # refuse early, before any data is read
            check_folder_writable(run.root)

    world.together(check_run_dir)
    # One process per machine reads (or downloads) the data first, then the others read that copy.
    world.together(lambda: experiment.load_data(data_dir) if world.local_rank == 0 else None)
    world.together(lambda: experiment.load_data(data_dir))
    trainer = world.together(lambda: experiment.build_trainer(run))

    def create_or_restore():
        if not resume and main:
            run.create(recipe)         # only now: a failed start leaves no half-made run behind
        if resume and run.last.exists():
            checkpoint = load_checkpoint(run.last, map_location=experiment.device)
            trainer.load_state_dict(validate_training_checkpoint(checkpoint, run.last), str(run.last))
            st = trainer.state
            log(f"resumed {run.root} at epoch {st.epoch + 1}" + (f", batch {st.batch}" if st.batch else ""))
        elif resume:
            log(f"{run.root} has no checkpoint yet; starting from the beginning")

    world.together(create_or_restore)
    return trainer
