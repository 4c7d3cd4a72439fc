"""`cifarkit sweep`: one worker of an Optuna study.

Optuna does the work: its RDB storage holds the study (SQLite in runs/<study>/study.db by
default; PostgreSQL for workers on many machines), its sampler proposes recipes, its pruner stops
weak trials, and its heartbeat marks a killed worker's trial failed and re-queues it (with the same
parameters) through RetryHeartbeatStaleTrialCallback. Start as many workers as you like with the
same --study and --storage; each takes the next trial until the study has --trials finished ones.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from cifarkit.config import RECIPE_NAME, load_recipe, recipe_to_dict
from cifarkit.device import check_training_precision, resolve_device
from cifarkit.errors import CheckpointError, CifarkitError, ConfigError
from cifarkit.sweep.space import Space, load_space
from cifarkit.sweep.trial import TrialRunner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUNS_ROOT = Path("runs")
MAX_RETRY = 2          # a trial whose worker died is re-queued this many times, then left failed


def study_dir(study_name: str) -> Path:
    return RUNS_ROOT / study_name


def default_storage(study_name: str) -> str:
    return f"sqlite:///{study_dir(study_name).as_posix()}/study.db"


def check_study_name(name: str) -> str:
    if RECIPE_NAME.fullmatch(name) is None or ".." in name:
        raise ConfigError(f"study name {name!r:.70} must be 1-64 letters, digits, '.', '_' or '-' (it names "
                          "the folder runs/<study>)")
    return name


def open_storage(url: str, heartbeat: int | None = None) -> RDBStorage:
    """Optuna's RDB storage; with `heartbeat` (seconds) a running trial's worker proves it is alive,
    and a trial silent for two intervals is failed and re-queued by the next worker that looks."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        raise ConfigError(f"--storage {url!r:.80} is not a database URL; use sqlite:///PATH or "
                          "postgresql://USER:PASSWORD@HOST/DATABASE") from None
    kwargs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            kwargs = dict(heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    last_error = None
    for attempt in range(3):         # workers started together may race to create the tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
        except SQLAlchemyError as e:
            last_error = e
            time.sleep(1 + attempt)
        except ImportError as e:
            raise CifarkitError(f"storage {shown} needs a database driver that is not installed ({e}); "
                                "pip install psycopg2-binary for PostgreSQL") from None
    first_line = str(getattr(last_error, "orig", None) or last_error).strip().splitlines()[0]
    raise CifarkitError(f"cannot open the study storage {shown}: {first_line}")


def build_sampler(space: Space, worker: int) -> optuna.samplers.BaseSampler:
    cfg = space.sampler
    seed = None if cfg.seed is None else cfg.seed + worker
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: with several workers, running trials count as bad, so they spread out
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, constant_liar=True)


def build_pruner(space: Space, epochs: int) -> optuna.pruners.BasePruner:
    cfg = space.pruner
    if cfg.name == "median":
        # Steps are 1-based epochs and Optuna prunes from step n_warmup_steps on: +1 keeps the
        # first `warmup_epochs` epochs safe.
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.warmup_epochs + 1)
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource, max_resource=epochs,
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def run_sweep(recipe_name: str, space_path: str | Path, trials: int, *, overrides: list[str] | None = None,
              storage: str | None = None, study_name: str | None = None, data_dir=None, device: str | None = None,
              heartbeat: int = 60, worker: int = 0, log: Callable[[str], None] = print) -> dict:
    """Work on the study until it has `trials` finished (complete or pruned) trials; returns counts."""
    if trials < 0:
        raise ConfigError("--trials must be >= 0")
    if heartbeat < 1:
        raise ConfigError("--heartbeat must be at least 1 second")
    optuna.logging.set_verbosity(optuna.logging.WARNING)     # each trial gets one line of ours
    recipe = load_recipe(recipe_name, overrides or [])
    base = recipe_to_dict(recipe)
    space = load_space(space_path, base)
    check_training_precision(recipe.train.precision, resolve_device(device or recipe.device))
    name = check_study_name(study_name or f"{recipe.name}-{Path(space_path).stem}")
    folder = study_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(name)
    epochs = space.trial.epochs or recipe.train.epochs
    study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat), direction="maximize",
                                sampler=build_sampler(space, worker), pruner=build_pruner(space, epochs),
                                load_if_exists=True)
    check_same_study(study, space, base, url)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    log(f"study {name} ({url}): {done} of {trials} trials finished; worker {worker} joins")
    if done < trials:
        runner = TrialRunner(base, space, folder, name, data_dir=data_dir, device=device, worker=worker, log=log)
        study.optimize(runner, n_trials=trials - done, gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED), _log_trial(log)])
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    log(f"study {name}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return counts


def check_same_study(study: optuna.Study, space: Space, base: dict, url: str) -> None:
    """A study keeps the space and recipe it was started with: a worker with others is refused."""
    mine = {"space": json.loads(json.dumps(space.to_dict())), "recipe": json.loads(json.dumps(base))}
    attrs = study.user_attrs
    for key, value in mine.items():
        if key not in attrs:
            study.set_user_attr(key, value)
        elif attrs[key] != value:
            raise CheckpointError(f"study {study.study_name} in {url} was started with another {key}; "
                                  "choose a new --study name, or run it with the same recipe and space")


def _log_trial(log: Callable[[str], None]):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attrs = trial.user_attrs
        params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        if trial.state == TrialState.COMPLETE:
            outcome = f"val_acc {trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned ({attrs.get('pruned_reason', 'pruner')})"
        else:
            outcome = trial.state.name.lower()
        log(f"trial {trial.number}: {outcome}; {attrs.get('params_count', 0):,} parameters; {params}")
    return callback


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


__all__ = ["run_sweep", "open_storage", "default_storage", "study_dir", "build_sampler", "build_pruner",
           "check_study_name", "check_same_study", "FINISHED"]
