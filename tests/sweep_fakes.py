"""A tiny recipe and space for the sweep tests: a 2-stage ResNet that learns the synthetic data in
a few epochs, a parameter budget that the widest choice exceeds, and a pruner that may stop a
trial after its first epoch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cifarkit

TINY_RECIPE = """\
name: tiny
budget: 20000
data: {verify: false, val_size: 100}
model: {arch: resnet, stem_width: 8, widths: [8, 16], blocks: [1, 1]}
augment: {crop_padding: 2, flip: random}
train: {epochs: 4, batch_size: 50, optimizer: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005,
        schedule: cosine, warmup_epochs: 0, precision: auto}
eval: {tta: none}
"""

TINY_SPACE = """\
trial: {epochs: 4}
sampler: {name: tpe, seed: 0, n_startup_trials: 3}
pruner: {name: median, n_startup_trials: 1, warmup_epochs: 0}
params:
  train.lr: {type: float, low: 0.00001, high: 0.2, log: true}
  model.widths: {type: categorical, choices: [[8, 16], [12, 24], [64, 128]]}
  model.attention: {type: categorical, choices: [none, se]}
"""

# The widest choice: over the 20,000-parameter budget of TINY_RECIPE.
OVER_BUDGET = {"train.lr": 0.05, "model.widths": "[64, 128]", "model.attention": "none"}
GOOD = {"train.lr": 0.1, "model.widths": "[8, 16]", "model.attention": "none"}
HOPELESS = {"train.lr": 0.00001, "model.widths": "[8, 16]", "model.attention": "se"}


def write_inputs(folder: Path, recipe: str = TINY_RECIPE, space: str = TINY_SPACE) -> tuple[Path, Path]:
    (folder / "tiny.yaml").write_text(recipe)
    (folder / "space.yaml").write_text(space)
    return folder / "tiny.yaml", folder / "space.yaml"


def sweep_command(data_dir: Path, study: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cifarkit", "sweep", "--recipe", "tiny.yaml", "--space", "space.yaml",
            "--trials", str(trials), "--study", study, "--data-dir", str(data_dir), "--device", "cpu", *extra]


def worker_env() -> dict[str, str]:
    """The environment of a worker process: this cifarkit first on the path, one thread each."""
    src = str(Path(cifarkit.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_worker(cwd: Path, command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=worker_env(), stdout=out, stderr=subprocess.STDOUT)
