"""`cifarkit train`: a recipe in, a complete run directory out (trained, then evaluated in-process)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from cifarkit.config import Recipe
from cifarkit.experiment import Experiment
from cifarkit.fsio import write_json
from cifarkit.rundir import RunDir, check_writable
from cifarkit.runinfo import run_record
from cifarkit.train.checkpoint import load_checkpoint
from cifarkit.train.checkpoint_schema import validate_training_checkpoint


def command_line(argv: list[str]) -> str:
    """The command as typed, with the program's name instead of its path: run.json is meant to be
    shared, and where cifarkit is installed says nothing about the run."""
    return " ".join([Path(argv[0]).name, *argv[1:]]) if argv else ""


def default_run_dir(recipe: Recipe, runs_root: str | Path = "runs") -> Path:
    return Path(runs_root) / f"{recipe.name}-s{recipe.seed}"


def train_run(recipe: Recipe, run_dir: str | Path, *, data_dir=None, resume: bool = False, force: bool = False,
              evaluate: bool = True, device: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Train `recipe` into `run_dir` (or continue the run there), then evaluate it on the test set
    unless `evaluate` is False; returns the training summary.

    Everything that can be refused without the data is refused before any file is written; the
    run directory is locked against a second process for the whole command.
    """
    experiment = Experiment(recipe, device=device, log=log)
    experiment.check()
    run = RunDir(run_dir)
    fresh_folder = not run.root.exists()
    with run.lock():
        try:
            trainer = _start(run, experiment, recipe, data_dir, resume, force, log)
        except BaseException:
            if fresh_folder and not resume and not run.exists():
                run.remove_empty()          # a refused start leaves nothing behind for the next try
            raise
        record = run_record(experiment.device, command=command_line(sys.argv),
                            data_source=experiment.data.arrays.source, seed=recipe.seed,
                            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_json(run.run_json, record)
        summary = trainer.fit()
        write_json(run.run_json, {**record, "train": summary})
        if evaluate:
            from cifarkit.evaluate.report import evaluate_run
            evaluate_run(run.root, experiment=experiment, models=trainer.trained_models(), log=log, locked=True)
    return summary


def _start(run: RunDir, experiment: Experiment, recipe: Recipe, data_dir, resume: bool, force: bool,
           log: Callable[[str], None]):
    """Check the run directory, read the data, build the trainer; restore the checkpoint on a
    resume. Nothing is written into the directory before the data is read and the trainer built."""
    if resume:
        diffs = run.check_resume(recipe, force)
        if diffs:
            log("resuming with a changed recipe (--force): " + "; ".join(diffs))
        check_writable(run.root)
        run.remove_stale_temporaries()
    else:
        run.check_new()            # refuse early, before any data is read
        check_writable(run.root)
    experiment.load_data(data_dir)
    trainer = experiment.build_trainer(run)
    if not resume:
        run.create(recipe)         # only now: a failed start leaves no half-made run behind
    if resume and run.last.exists():
        checkpoint = load_checkpoint(run.last, map_location=experiment.device)
        trainer.load_state_dict(validate_training_checkpoint(checkpoint, run.last), str(run.last))
        st = trainer.state
        log(f"resumed {run.root} at epoch {st.epoch + 1}" + (f", batch {st.batch}" if st.batch else ""))
    elif resume:
        log(f"{run.root} has no checkpoint yet; starting from the beginning")
    return trainer
