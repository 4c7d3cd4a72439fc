"""Rebuild a trained model from a run's weights file or from an exported safetensors bundle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cifarkit.config import Recipe, recipe_from_dict
from cifarkit.errors import CheckpointError, CifarkitError
from cifarkit.models.registry import build_model
from cifarkit.rundir import RunDir
from cifarkit.schema import to_dict
from cifarkit.train.checkpoint import load_checkpoint, load_weights
from cifarkit.train.checkpoint_schema import validate_export, validate_weights_file


@dataclass
class TrainedModel:
    model: nn.Module
    recipe: Recipe
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: list[str]
    source: str


def _from_state(state_dict: dict, recipe_dict: dict, normalization: dict, source: str, device) -> TrainedModel:
    try:
        recipe = recipe_from_dict(recipe_dict)
    except CifarkitError as e:
        raise CheckpointError(f"{source} carries an invalid recipe: {e}") from None
    classes = list(normalization.get("classes") or [])
    model = build_model(recipe.model, len(classes) or 10)
    load_weights(model, state_dict, source)
    memory_format = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format).eval()
    return TrainedModel(model, recipe, tuple(normalization["mean"]), tuple(normalization["std"]), classes, source)


def load_weights_file(path: str | Path, device="cpu") -> TrainedModel:
    ckpt = validate_weights_file(load_checkpoint(path, map_location=device), path)
    return _from_state(ckpt["model"], ckpt["recipe"], ckpt["normalization"], str(path), device)


def load_export(directory: str | Path, device="cpu") -> TrainedModel:
    """An `cifarkit export` bundle: model.safetensors + model.json (architecture, normalization)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{directory} is not an export (needs model.json and model.safetensors)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        state = load_file(str(weights_path), device=str(device))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{directory} holds a corrupt export: {str(e).splitlines()[0][:200]}") from None
    meta = validate_export(meta, state, meta_path, weights_path)
    return _from_state(state, meta["recipe"], meta["normalization"], str(weights_path), device)


def load_trained(source: str | Path, weights: str = "auto", device="cpu") -> TrainedModel:
    """One model: a run directory (with `weights` = final/best/ema/swa/auto), a weights .pt file, or
    an export folder. A run whose selected model is an ensemble is refused here with the choice of
    members; `load_models` loads all of them."""
    members = load_models(source, weights, device)
    if len(members) > 1:
        kinds = "+".join(Path(m.source).stem for m in members)
        raise CheckpointError(f"{source}: the selected model is the ensemble {kinds}, which is not one set of "
                              f"weights; choose a member with --weights ({', '.join(Path(m.source).stem for m in members)})")
    return members[0]


def load_models(source: str | Path, weights: str = "auto", device="cpu") -> list[TrainedModel]:
    """The model(s) `weights` names; several when it names an ensemble (see `weight_kinds`)."""
    source = Path(source)
    if source.is_file():
        return [load_weights_file(source, device)]
    if (source / "model.safetensors").is_file():
        return [load_export(source, device)]
    run = RunDir(source)
    if not run.exists():
        raise CheckpointError(f"{source} is not a run directory, a weights file or an export")
    members = []
    for kind in weight_kinds(run, weights):
        if not run.weights(kind).is_file():
            have = ", ".join(run.available_weights()) or "none (train it first)"
            raise CheckpointError(f"{run.root} has no '{kind}' weights; available: {have}")
        trained = load_weights_file(run.weights(kind), device)
        _check_matches_run(trained, run)
        members.append(trained)
    return members


def _check_matches_run(trained: TrainedModel, run: RunDir) -> None:
    """Weights copied in from another run must not pass for this run's model."""
    expected = to_dict(run.load_recipe().model)
    found = to_dict(trained.recipe.model)
    if expected != found:
        diffs = [f"{k}: {found.get(k)!r} in the weights, {expected.get(k)!r} in recipe.yaml"
                 for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]
        raise CheckpointError(f"{trained.source} does not belong to {run.root}: its architecture differs "
                              f"({'; '.join(diffs[:4])})")


def weight_kinds(run: RunDir, weights: str) -> list[str]:
    """Which weights files `weights` means for a run.

      auto       what `evaluate` selected on the validation split -- every member when that was the
                 ensemble -- else best, else final
      ensemble   the recipe's ensemble members that were trained (at least two)
      other      that one kind
    """
    if weights == "ensemble":
        recipe = run.load_recipe()
        members = [k for k in recipe.eval.ensemble if run.weights(k).is_file()]
        if len(members) < 2:
            raise CifarkitError(f"{run.root}: the recipe's ensemble {recipe.eval.ensemble} has fewer than two "
                                "trained members")
        return members
    if weights != "auto":
        return [weights]
    available = run.available_weights()
    summary = run.read_summary() if run.summary.is_file() else {}
    chosen = summary.get("selected")
    if chosen == "ensemble":
        members = (summary.get("models", {}).get("ensemble") or {}).get("members") or []
        if len(members) >= 2 and all(m in available for m in members):
            return list(members)
    elif chosen in available:
        return [chosen]
    for kind in ("best", "final"):
        if kind in available:
            return [kind]
    raise CheckpointError(f"{run.root} has no trained weights yet")
