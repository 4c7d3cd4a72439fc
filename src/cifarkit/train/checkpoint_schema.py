"""What a loaded checkpoint, weights file or export must hold, checked before anything uses it.

`torch.load(weights_only=True)` guarantees plain containers and tensors, not the right ones: a
`last.pt` without 'optimizer', a weights file whose 'normalization' is None or an export whose
model.json is `{}` used to end in a KeyError or TypeError far from the file. Each validator here
returns the structure when it is sound, else raises CheckpointError naming the file and the
first missing or wrong key -- and the cifarkit version that wrote the file, when that differs.
Non-finite numbers (a NaN weight gives a plausible-looking submission of class 0) are refused
the same way, naming the first bad tensor; `check_finite_logits` does the same for outputs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from cifarkit import __version__
from cifarkit.config import recipe_from_dict
from cifarkit.errors import CifarkitError, CheckpointError, ConfigError
from cifarkit.schema import parse_dataclass
from cifarkit.train.state import TrainState

WEIGHT_KINDS = ("final", "best", "ema", "swa")
EXPORT_FORMAT = "cifarkit-export-v1"
STATE_REQUIRED = ("epoch", "batch", "step")      # without these a resume cannot know where it is


class _Invalid(Exception):
    """One problem, worded without the file name (the caller adds it)."""


def validate_training_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict:
    """A `checkpoints/last.pt` as `Trainer.state_dict` writes it: recipe, state (TrainState's
    fields; fields a newer cifarkit added may be absent and take their defaults), model,
    optimizer, scaler/ema/swa/lookahead (None unless the recipe uses them), normalization.
    Returns it with 'state' checked and completed."""
    def check(ck: dict) -> dict:
        recipe = _recipe(ck)
        checked = {**ck, "state": _train_state(_required(ck, "state"))}
        _tensors(_required(ck, "model"), "model")
        _optimizer(_required(ck, "optimizer"))
        _normalization(_required(ck, "normalization"))
        _averaging(ck, recipe)
        if ck.get("scaler") is not None:
            _mapping(ck["scaler"], "scaler")
        _finite(ck, "")
        return checked
    return _validated(ckpt, path, check)


def validate_weights_file(ckpt: Any, path: str | os.PathLike) -> dict:
    """A `checkpoints/{final,best,ema,swa}.pt`: kind, model, recipe, normalization (plus optional
    epoch / val_acc / n_averaged)."""
    def check(ck: dict) -> dict:
        kind = _required(ck, "kind")
        if kind not in WEIGHT_KINDS:
            raise _Invalid(f"'kind' must be one of {', '.join(WEIGHT_KINDS)}, got {_show(kind)}")
        _mapping(_required(ck, "recipe"), "recipe")
        _tensors(_required(ck, "model"), "model")
        _normalization(_required(ck, "normalization"))
        _finite(ck["model"], "model.")
        return ck
    return _validated(ckpt, path, check)


def validate_export(meta: Any, tensors: Any, meta_path: str | os.PathLike,
                    weights_path: str | os.PathLike) -> dict:
    """An export: model.json (format, recipe, normalization with mean/std/classes) and the
    tensors of model.safetensors (finite). Returns the metadata."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
    try:
        fmt = _required(meta, "format")
        if fmt != EXPORT_FORMAT:
            raise _Invalid(f"'format' is {_show(fmt)}, not '{EXPORT_FORMAT}' (written by another "
                           f"program or another cifarkit; this is {__version__})")
        _mapping(_required(meta, "recipe"), "recipe")
        _normalization(_required(meta, "normalization"))
    except _Invalid as e:
        raise CheckpointError(f"{meta_path}: {e}") from None
    try:
        _tensors(tensors, "tensors")
        _finite(tensors, "")
    except _Invalid as e:
        raise CheckpointError(f"{weights_path}: {e}") from None
    return meta


def check_finite_tensors(tensors: Any, path: str | os.PathLike, prefix: str = "") -> None:
    """CheckpointError naming the first tensor (or number) in `tensors` that holds NaN or infinity."""
    try:
        _finite(tensors, prefix)
    except _Invalid as e:
        raise CheckpointError(f"{path}: {e}") from None


def check_finite_logits(logits: Any, what: str) -> None:
    """CheckpointError when a model's outputs hold NaN or infinity: its weights (or its input)
    are broken, and an argmax over them would still pick a class."""
    values = torch.as_tensor(logits)
    if not (values.is_floating_point() or values.is_complex()):
        return
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        rows, total = ((int(bad.flatten(1).any(1).sum()), values.shape[0]) if values.ndim >= 2
                       else (int(bad.sum()), values.numel()))
        raise CheckpointError(f"{what} gives non-finite outputs (NaN or infinity) for {rows} of {total} "
                              "images; its weights are broken, so no prediction is written")


# --- the checks ---------------------------------------------------------------------------------

def _validated(ckpt: Any, path, check) -> dict:
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} must hold a mapping, got {type(ckpt).__name__}")
    try:
        return check(ckpt)
    except _Invalid as e:
        raise CheckpointError(f"{path}: {e}{_written_by(ckpt)}") from None


def _written_by(ckpt: dict) -> str:
    version = ckpt.get("cifarkit_version")
    if version == __version__:
        return ""
    if version is None:
        return f" (written by a cifarkit that did not record its version; this is {__version__})"
    return f" (written by cifarkit {_show(version)}; this is {__version__})"


def _required(data: dict, key: str, where: str = "") -> Any:
    if key not in data:
        raise _Invalid(f"'{where}{key}' is missing")
    return data[key]


def _mapping(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"'{key}' must be a mapping, got {type(value).__name__}")
    return value


def _recipe(ck: dict):
    try:
        return recipe_from_dict(_mapping(_required(ck, "recipe"), "recipe"))
    except CifarkitError as e:
        raise _Invalid(f"'recipe' is not a valid recipe: {e}") from None


def _train_state(state: Any) -> dict:
    _mapping(state, "state")
    for key in STATE_REQUIRED:
        _required(state, key, "state.")
    try:
        parsed = parse_dataclass(TrainState, state, "state.")
    except ConfigError as e:
        raise _Invalid(str(e)) from None
    for key in STATE_REQUIRED:
        if getattr(parsed, key) < 0:
            raise _Invalid(f"'state.{key}' must be >= 0, got {getattr(parsed, key)}")
    return dataclasses.asdict(parsed)


def _tensors(value: Any, key: str) -> dict:
    _mapping(value, key)
    for name, tensor in value.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise _Invalid(f"'{key}' must map names to tensors; {_show(name)} holds a {type(tensor).__name__}")
    return value


def _optimizer(value: Any) -> None:
    _mapping(value, "optimizer")
    _mapping(_required(value, "state", "optimizer."), "optimizer.state")
    groups = _required(value, "param_groups", "optimizer.")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups):
        raise _Invalid("'optimizer.param_groups' must be a list of mappings, each with a 'params' list")


# What Trainer.load_state_dict reads from each averaging entry, and the recipe switch that makes it.
_AVERAGING = {
    "ema": (("module", "num_updates"), lambda r: r.train.ema_decay > 0),
    "swa": (("module", "n_averaged"), lambda r: r.train.swa_start > 0),
    "lookahead": (("slow",), lambda r: r.train.lookahead_every > 0),
}


def _averaging(ck: dict, recipe) -> None:
    for key, (fields, used) in _AVERAGING.items():
        value = ck.get(key)
        if value is None:
            if used(recipe):
                raise _Invalid(f"'{key}' is missing, but the checkpoint's recipe uses it")
            continue
        _mapping(value, key)
        for field in fields:
            _required(value, field, f"{key}.")
        if "module" in value:
            _tensors(value["module"], f"{key}.module")
        if "slow" in value and not (isinstance(value["slow"], list)
                                    and all(isinstance(t, torch.Tensor) for t in value["slow"])):
            raise _Invalid(f"'{key}.slow' must be a list of tensors")


def _normalization(value: Any) -> None:
    _mapping(value, "normalization")
    for key in ("mean", "std"):
        numbers = _required(value, key, "normalization.")
        if (not isinstance(numbers, (list, tuple)) or len(numbers) != 3
                or not all(_is_number(v) and math.isfinite(v) for v in numbers)):
            raise _Invalid(f"'normalization.{key}' must be three finite numbers, got {_show(numbers)}")
    if not all(v > 0 for v in value["std"]):
        raise _Invalid(f"'normalization.std' must be positive, got {_show(value['std'])}")
    classes = _required(value, "classes", "normalization.")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise _Invalid(f"'normalization.classes' must be a list of at least two class names, got {_show(classes)}")


def _finite(value: Any, where: str) -> None:
    """Raise naming the first tensor or float under `value` (depth first) that is not finite."""
    if isinstance(value, torch.Tensor):
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise _Invalid(f"'{where.rstrip('.')}' holds NaN or infinite values; the weights are broken "
                           "(a diverged run or a damaged file)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"'{where.rstrip('.')}' is {value}, not a finite number")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _finite(item, f"{where}{key}.")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _finite(item, f"{where}{i}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["validate_training_checkpoint", "validate_weights_file", "validate_export", "check_finite_tensors",
           "check_finite_logits", "WEIGHT_KINDS", "EXPORT_FORMAT"]
