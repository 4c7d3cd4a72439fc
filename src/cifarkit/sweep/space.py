"""SPACE.yaml: what a sweep samples, how, and what every trial trains.

    trial:                      # fixed for every trial (optional)
      epochs: 3                 #   train.epochs
      train_subset: 10000       #   data.train_subset (a class-balanced part of the training split)
      val_size: 5000            #   data.val_size (the objective needs a validation split)
    sampler: {name: tpe, seed: 0, n_startup_trials: 8}         # tpe (default) or random
    pruner: {name: median, n_startup_trials: 3, warmup_epochs: 1}   # median, hyperband or none
    params:                     # dotted recipe keys -> how to sample them
      train.lr:       {type: float, low: 0.5, high: 4.0, log: true}
      train.label_smoothing: {type: float, low: 0.0, high: 0.3, step: 0.05}
      augment.crop_padding:  {type: int, low: 0, high: 4, step: 2}
      model.attention:       {type: categorical, choices: [none, se]}
      model.blocks:   {type: categorical, choices: [[1, 1, 1], [2, 2, 2]]}   # a list per choice
      model.widths:   {type: float, low: 0.5, high: 1.5, step: 0.25, per_stage: [64, 256, 256], multiple_of: 8}
      # or: model.blocks: {type: int, low: 1, high: 3, stages: 3}           # one int per stage

`per_stage` samples one multiplier (the parameter Optuna sees) and gives the list of
round(multiplier x entry) to a multiple of `multiple_of`; `stages: N` samples N independent values
named KEY[0] ... KEY[N-1]. The data section is fixed for a study (every trial shares the data one
worker loaded), so `data.*` keys cannot be sampled; set them in the recipe or under `trial:`.

Validated like recipes, before any work: unknown keys (of the space and of the recipe) name the
nearest valid one; every bound and choice must make a valid recipe (with the other parameters at
their first value: low, or the first choice).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cifarkit.config import recipe_from_dict
from cifarkit.errors import ConfigError
from cifarkit.schema import check, parse_dataclass, to_dict, unknown_key_error

FIXED_KEYS = ("name", "description")      # a trial's name is set by the sweep


@dataclass
class ParamSpec:
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    stages: int = 0                          # sample this many values independently -> a list
    per_stage: list[float] | None = None     # one multiplier x each entry -> a list of ints
    multiple_of: int = 1                     # with per_stage: round each entry to a multiple of this


@dataclass
class SamplerSpec:
    name: Literal["tpe", "random"] = "tpe"
    seed: int | None = 0                     # each worker adds its --worker index
    n_startup_trials: int = 10               # tpe: random trials before the model takes over

    def validate(self) -> None:
        check(self.n_startup_trials >= 0, "'sampler.n_startup_trials' must be >= 0")


@dataclass
class PrunerSpec:
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = 5                # median: trials that are never pruned
    warmup_epochs: int = 0                   # median: a trial is never pruned in its first N epochs
    min_resource: int = 1                    # hyperband: epochs of the smallest bracket
    reduction_factor: int = 3                # hyperband

    def validate(self) -> None:
        check(self.n_startup_trials >= 0 and self.warmup_epochs >= 0, "pruner settings must be >= 0")
        check(self.min_resource >= 1, "'pruner.min_resource' must be >= 1")
        check(self.reduction_factor >= 2, "'pruner.reduction_factor' must be >= 2")


@dataclass
class TrialSpec:
    epochs: int | None = None
    train_subset: int | None = None
    val_size: int | None = None

    def overrides(self) -> dict[str, Any]:
        keys = {"epochs": "train.epochs", "train_subset": "data.train_subset", "val_size": "data.val_size"}
        return {keys[k]: v for k, v in to_dict(self).items() if v is not None}


@dataclass
class Space:
    params: dict[str, ParamSpec] = field(default_factory=dict)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    trial: TrialSpec = field(default_factory=TrialSpec)

    def to_dict(self) -> dict:
        return to_dict(self)


# -- loading -------------------------------------------------------------------------------------

def load_space(path: str | Path, base: dict) -> Space:
    """Read and validate SPACE.yaml against `base`, the resolved recipe (as a dict) trials start from."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"space file not found: {path}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"space {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"space {path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return space_from_dict(data, base)
    except ConfigError as e:
        raise ConfigError(f"space {path}: {e}") from None


def space_from_dict(data: Any, base: dict) -> Space:
    if not isinstance(data, dict):
        raise ConfigError("a space must be a mapping with 'params' (and 'trial', 'sampler', 'pruner')")
    data = dict(data)
    params = data.pop("params", None)
    if not isinstance(params, dict) or not params:
        raise ConfigError("'params' must map recipe keys (e.g. train.lr) to how they are sampled")
    space = parse_dataclass(Space, data)
    valid = _recipe_keys(base)
    for key, raw in params.items():
        key = str(key)
        if key.startswith("data."):
            raise ConfigError(f"'params.{key}': the data section is fixed for a study (every trial shares the "
                              "loaded data); set it in the recipe or under 'trial:'")
        if key not in valid or key in FIXED_KEYS:
            raise unknown_key_error("params.", key, [k for k in valid if k not in FIXED_KEYS])
        spec = parse_dataclass(ParamSpec, raw, f"params.{key}.")
        _check_param(key, spec)
        space.params[key] = spec
    trial_base = apply_values(base, space.trial.overrides())
    for key, value in space.trial.overrides().items():
        _check_value(base, key, value, "trial")
    check(recipe_from_dict(trial_base).data.val_size > 0,
          "the objective is validation accuracy: set 'trial.val_size' (or the recipe's data.val_size) above 0")
    # Each end of each parameter, with the others at their first value (widths and blocks sampled
    # together must agree on the number of stages): a wrong type or range fails now, not in a trial.
    firsts = {key: extreme_values(spec)[0] for key, spec in space.params.items()}
    for key, spec in space.params.items():
        others = apply_values(trial_base, {k: v for k, v in firsts.items() if k != key})
        for value in extreme_values(spec):
            _check_value(others, key, value, f"params.{key}")
    return space


def _recipe_keys(base: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in base.items():
        if isinstance(v, dict):
            keys |= _recipe_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def _check_param(key: str, spec: ParamSpec) -> None:
    where = f"'params.{key}'"
    if spec.type == "categorical":
        check(bool(spec.choices), f"{where}: a categorical needs a non-empty 'choices' list")
        check(spec.low is None and spec.high is None and spec.step is None and not spec.log,
              f"{where}: a categorical takes 'choices', not low/high/step/log")
        check(len({_encode(c) for c in spec.choices}) == len(spec.choices), f"{where}: 'choices' repeats a value")
    else:
        check(spec.choices is None, f"{where}: 'choices' belongs to type categorical")
        check(spec.low is not None and spec.high is not None, f"{where}: type {spec.type} needs 'low' and 'high'")
        check(spec.low <= spec.high, f"{where}: 'low' must be <= 'high'")
        check(not spec.log or spec.low > 0, f"{where}: a log scale needs 'low' > 0")
        check(not (spec.log and spec.step is not None), f"{where}: 'log' and 'step' cannot be combined")
        check(spec.step is None or spec.step > 0, f"{where}: 'step' must be positive")
        if spec.type == "int":
            check(float(spec.low).is_integer() and float(spec.high).is_integer()
                  and (spec.step is None or float(spec.step).is_integer()),
                  f"{where}: an int's low, high and step must be integers")
    check(spec.stages >= 0, f"{where}: 'stages' must be >= 0")
    check(not (spec.stages and spec.per_stage), f"{where}: choose 'stages' or 'per_stage', not both")
    if spec.per_stage is not None:
        check(spec.type != "categorical" or all(_is_number(c) for c in spec.choices),
              f"{where}: 'per_stage' needs numeric multipliers")
        check(len(spec.per_stage) > 0 and all(v > 0 for v in spec.per_stage), f"{where}: 'per_stage' entries must be positive")
    check(spec.multiple_of >= 1, f"{where}: 'multiple_of' must be >= 1")


def _check_value(base: dict, key: str, value: Any, where: str) -> None:
    try:
        recipe_from_dict(apply_values(base, {key: value}))
    except ConfigError as e:
        raise ConfigError(f"'{where}': {key} = {value!r} does not make a valid recipe ({e})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- sampling ------------------------------------------------------------------------------------

def extreme_values(spec: ParamSpec) -> list[Any]:
    """The recipe values a parameter can reach at its ends (every choice of a categorical)."""
    raw = list(spec.choices) if spec.type == "categorical" else [spec.low, spec.high]
    if spec.type == "int":
        raw = [int(v) for v in raw]
    if spec.per_stage is not None:
        return [scale_stages(spec, m) for m in raw]
    if spec.stages:
        return [[v] * spec.stages for v in raw]
    return raw


def scale_stages(spec: ParamSpec, multiplier: float) -> list[int]:
    """round(multiplier x entry) to the nearest multiple of `multiple_of` (halves up), at least one multiple."""
    unit = spec.multiple_of
    return [max(unit, math.floor(multiplier * v / unit + 0.5) * unit) for v in spec.per_stage]


def sample(trial, space: Space) -> dict[str, Any]:
    """Recipe values (dotted key -> value) for one Optuna trial."""
    values = {}
    for key, spec in space.params.items():
        if spec.stages:
            values[key] = [_suggest(trial, f"{key}[{i}]", spec) for i in range(spec.stages)]
        elif spec.per_stage is not None:
            values[key] = scale_stages(spec, _suggest(trial, key, spec))
        else:
            values[key] = _suggest(trial, key, spec)
    return values


def _suggest(trial, name: str, spec: ParamSpec):
    if spec.type == "float":
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    # Optuna's choices are scalars: a list (widths, blocks) travels as its JSON text.
    encoded = [_encode(c) for c in spec.choices]
    return _decode(trial.suggest_categorical(name, encoded))


def _encode(choice: Any):
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return json.dumps(choice)


def _decode(value: Any):
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def apply_values(base: dict, values: dict[str, Any]) -> dict:
    """A copy of the recipe dict `base` with dotted keys set."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        *sections, last = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = copy.deepcopy(value)
    return data


def trial_recipe_dict(base: dict, space: Space, values: dict[str, Any], name: str) -> dict:
    """The recipe of one trial: the base recipe, the space's fixed trial settings, the sampled values."""
    data = apply_values(base, {**space.trial.overrides(), **values})
    data["name"] = name
    return data


__all__ = ["ParamSpec", "SamplerSpec", "PrunerSpec", "TrialSpec", "Space", "load_space", "space_from_dict",
           "sample", "apply_values", "trial_recipe_dict", "extreme_values", "scale_stages"]
