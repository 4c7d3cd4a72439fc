"""The run directory: one place that knows where each output of a run lives.

runs/<name>/
  recipe.yaml          the resolved recipe (what `--resume` compares against)
  run.json             versions, git commit, hardware, command line, data source
  metrics.jsonl        one JSON line per epoch
  checkpoints/last.pt  full training state, rewritten atomically every epoch (and on interrupt)
  checkpoints/{final,best,ema,swa}.pt   weights for evaluation
  summary.json         every evaluation number (written by `cifarkit evaluate`)
  plots/*.png          confusion matrices, ROC curves, training curves
  tensorboard/         TensorBoard event files of the training curves
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Iterator

import yaml

from cifarkit.config import Recipe, dump_recipe, recipe_diff, recipe_from_dict, recipe_to_dict
from cifarkit.errors import CheckpointError, ConfigError, DataError, OutputError
from cifarkit.fsio import read_jsonl, write_text

WEIGHT_KINDS = ("final", "best", "ema", "swa")


class RunLockedError(CheckpointError):
    """Another process holds the run directory's lock."""
# Keys that may change between a run and its resume without changing what is computed.
RESUME_FREE_KEYS = ("name", "description", "device", "data.download")


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    recipe_path = property(lambda self: self.root / "recipe.yaml")
    run_json = property(lambda self: self.root / "run.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    last = property(lambda self: self.root / "checkpoints" / "last.pt")
    summary = property(lambda self: self.root / "summary.json")
    plots = property(lambda self: self.root / "plots")
    tensorboard = property(lambda self: self.root / "tensorboard")

    def weights(self, kind: str) -> Path:
        return self.checkpoints / f"{kind}.pt"

    def available_weights(self) -> list[str]:
        return [k for k in WEIGHT_KINDS if self.weights(k).is_file()]

    def exists(self) -> bool:
        return self.recipe_path.is_file()

    def check_new(self) -> None:
        """Refuse to mix two runs in one directory."""
        if self.exists():
            raise CheckpointError(f"{self.root} already holds a run; continue it with --resume {self.root}, "
                                "or choose another directory with --out")

    def create(self, recipe: Recipe) -> None:
        """Make the directory for a new run and write its resolved recipe (callers check writability
        with `fsio.check_folder_writable` first, before any long work)."""
        self.check_new()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text(self.recipe_path, dump_recipe(recipe))

    def load_recipe(self) -> Recipe:
        if not self.exists():
            raise CheckpointError(f"{self.root} is not a cifarkit run directory (no recipe.yaml)")
        try:
            data = yaml.safe_load(self.recipe_path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise ConfigError(f"{self.recipe_path} is not valid YAML") from None
        return recipe_from_dict(data)

    def check_resume(self, recipe: Recipe, force: bool) -> list[str]:
        """Refuse to resume with a different recipe unless forced; returns the differing keys."""
        saved = recipe_to_dict(self.load_recipe())
        wanted = recipe_to_dict(recipe)
        diffs = [d for d in recipe_diff(saved, wanted) if not d.split(":")[0] in RESUME_FREE_KEYS]
        if diffs and not force:
            shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
            raise ConfigError(f"the recipe differs from the one {self.root} was started with ({shown}); "
                              "resume with the same recipe, or pass --force")
        if diffs:
            write_text(self.recipe_path, dump_recipe(recipe))
        return diffs

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary files of writes that a crash cut short (their targets are intact)."""
        stale = [p for d in (self.root, self.checkpoints, self.plots) if d.is_dir()
                 for p in d.glob(".*.tmp") if p.is_file()]
        for p in stale:
            p.unlink()
        return stale

    def remove_empty(self) -> None:
        """Remove the run folder when it holds nothing but empty subfolders (a start that failed
        before writing anything)."""
        if not self.root.is_dir() or any(not p.is_dir() for p in self.root.rglob("*")):
            return
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            folder.rmdir()
        self.root.rmdir()

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics)

    def read_run_info(self) -> dict:
        """run.json ({} when it is missing or unreadable: it describes the run, it decides nothing)."""
        try:
            info = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return info if isinstance(info, dict) else {}

    def read_summary(self, missing_ok: bool = False) -> dict | None:
        """summary.json as written by `cifarkit evaluate` (None when it is missing and `missing_ok`)."""
        if not self.summary.is_file():
            if missing_ok:
                return None
            raise CheckpointError(f"{self.root} has no summary.json; run `cifarkit evaluate {self.root}` first")
        try:
            summary = json.loads(self.summary.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(f"{self.summary} is not valid JSON; run `cifarkit evaluate {self.root}` to write it "
                            "again") from None
        if not isinstance(summary, dict):
            raise DataError(f"{self.summary} does not hold a JSON object")
        return summary

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run for the duration: a second process that trains,
        resumes or evaluates the same run is refused with one line instead of interleaving its
        files. The lock is an flock on the directory itself, so it writes nothing and dies with
        its process (no stale locks)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY)
        except OSError as e:
            raise OutputError(f"cannot write to {self.root}: {e.strerror or e}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockedError(f"{self.root} is in use by another cifarkit process (training or "
                                     "evaluating it); wait for it to finish") from None
            yield
        finally:
            os.close(fd)                     # closing releases the lock
