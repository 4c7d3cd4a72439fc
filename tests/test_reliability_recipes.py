"""Recipes that must be refused before any work: non-finite numbers, `base:` loops and lookups,
unsafe names. Each is checked in the library and through the CLI (one line, exit 2, nothing written)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, get_args, get_origin, get_type_hints

import pytest

from cifarkit.config import MAX_BASE_DEPTH, Recipe, load_recipe, load_recipe_dict
from cifarkit.errors import ConfigError
from cifarkit.models.specs import MODEL_SPECS
from cifarkit.schema import ALLOW_NONFINITE, parse_dataclass
from cli_helpers import refusal

TINY = ["--set", "data.verify=false", "--set", "model.stem_width=8", "--set", "model.widths=[8,16]",
        "--set", "model.blocks=[1,1]", "--set", "data.val_size=100", "--epochs", "1",
        "--set", "train.batch_size=64", "--set", "train.precision=fp32", "--device", "cpu", "--no-eval"]


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)               # default outputs (runs/) must land in the test's folder


def cli_error(capsys, argv) -> str:
    """The one stderr line of a refused command; the exit code is the one documented for recipe errors."""
    return refusal(capsys, argv, ConfigError.exit_code)


# --- non-finite numbers --------------------------------------------------------------------------

def _float_paths(cls, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, kind) for every float-typed field of a recipe section, found from the type hints,
    so a float field added later is covered without editing this test. kind: "scalar" or "list"."""
    out = []
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        args = get_args(tp) if get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if float in args:
            out.append((prefix + f.name, "scalar"))
        elif get_origin(tp) is list and get_args(tp) == (float,):
            out.append((prefix + f.name, "list"))
        elif dataclasses.is_dataclass(tp) and f.name != "model":
            out += _float_paths(tp, f"{prefix}{f.name}.")
    return out


RECIPE_FLOATS = _float_paths(Recipe)
MODEL_FLOATS = {arch: _float_paths(spec, "model.") for arch, spec in MODEL_SPECS.items()}


def test_the_float_fields_are_found():
    keys = {k for k, _ in RECIPE_FLOATS}
    assert {"train.lr", "train.weight_decay", "train.warmup_epochs", "augment.color_jitter",
            "target_accuracy", "train.swa_lr", "eval.tta_fraction"} <= keys
    assert ("model.whiten_eps", "scalar") in MODEL_FLOATS["fastnet"]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key, kind", RECIPE_FLOATS)
def test_every_recipe_float_refuses_non_finite_values(key, kind, value):
    override = f"{key}=[{value}, 0.5]" if kind == "list" else f"{key}={value}"
    with pytest.raises(ConfigError) as info:
        load_recipe("seed002", [override])
    assert f"'{key}" in str(info.value) and "must be a finite number" in str(info.value)


@pytest.mark.parametrize("arch", sorted(MODEL_FLOATS))
def test_every_model_float_refuses_infinity(arch):
    for key, _ in MODEL_FLOATS[arch]:
        with pytest.raises(ConfigError, match=f"'{key}' must be a finite number, got inf"):
            load_recipe("fast94" if arch == "fastnet" else "seed002", [f"{key}=.inf"])


def test_an_integer_too_large_for_a_float_is_refused_not_overflowed():
    with pytest.raises(ConfigError, match="'train.lr' must be a finite number"):
        load_recipe("seed002", ["train.lr=" + "9" * 400])


def test_finite_values_still_load():
    recipe = load_recipe("seed002", ["train.lr=0.05", "augment.color_jitter=[0.4, 0.4, 0, 0.1]"])
    assert recipe.train.lr == 0.05 and recipe.augment.color_jitter == [0.4, 0.4, 0.0, 0.1]


def test_a_field_may_allow_non_finite_values_explicitly():
    @dataclass
    class Section:
        limit: Annotated[float, ALLOW_NONFINITE] = 1.0
        limits: Annotated[list[float], ALLOW_NONFINITE] = field(default_factory=list)
        rate: float = 1.0

    parsed = parse_dataclass(Section, {"limit": float("inf"), "limits": [float("-inf"), 2]})
    assert parsed.limit == float("inf") and parsed.limits == [float("-inf"), 2.0]
    with pytest.raises(ConfigError, match="'rate' must be a finite number"):
        parse_dataclass(Section, {"rate": float("nan")})


def test_a_huge_finite_warmup_is_refused_by_range():
    with pytest.raises(ConfigError, match=r"'train.warmup_epochs' must be in \[0, 1e\+06\]"):
        load_recipe("seed002", ["train.warmup_epochs=1.0e+300"])


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.weight_decay=.nan", "train.warmup_epochs=.inf",
                                      "train.warmup_epochs=1.0e+300", "augment.color_jitter=[.inf,0,0,0]"])
def test_train_refuses_non_finite_numbers_before_writing(capsys, fake_cifar, tmp_path, override):
    out = tmp_path / "run"
    msg = cli_error(capsys, ["train", "--recipe", "seed002", *TINY, "--data-dir", fake_cifar, "--out", out,
                             "--set", override])
    assert f"'{override.split('=')[0]}" in msg
    assert not out.exists() and not (tmp_path / "runs").exists()


# --- base chains ---------------------------------------------------------------------------------

def test_a_recipe_that_is_its_own_base(tmp_path):
    (tmp_path / "loop2.yaml").write_text("base: loop2\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"loop2.yaml: the 'base' chain loops \(.*loop2.yaml -> .*loop2.yaml\)"):
        load_recipe(str(tmp_path / "loop2.yaml"))


@pytest.mark.parametrize("spelling", ["b", "b.yaml", "./b.yaml"])
def test_a_two_file_cycle(tmp_path, spelling):
    (tmp_path / "a.yaml").write_text(f"base: {spelling}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="the 'base' chain loops"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_a_very_long_chain_is_refused(tmp_path):
    for i in range(MAX_BASE_DEPTH + 2):
        (tmp_path / f"r{i}.yaml").write_text(f"base: r{i + 1}\n" if i <= MAX_BASE_DEPTH else "name: end\n")
    with pytest.raises(ConfigError, match=f"longer than {MAX_BASE_DEPTH}"):
        load_recipe(str(tmp_path / "r0.yaml"))
    assert load_recipe(str(tmp_path / f"r{3}.yaml")).name == "end"     # a shorter chain of the same files loads


def test_loop_through_the_cli_is_one_line(capsys, tmp_path):
    (tmp_path / "loop2.yaml").write_text("base: loop2\n")
    msg = cli_error(capsys, ["summary", "--recipe", tmp_path / "loop2.yaml"])
    assert "loops" in msg and "loop2.yaml" in msg


@pytest.mark.parametrize("spelling", ["parent.yaml", "parent"])
def test_base_is_found_next_to_the_recipe_not_in_the_current_folder(tmp_path, monkeypatch, spelling):
    recipes, elsewhere = tmp_path / "recipes", tmp_path / "elsewhere"
    recipes.mkdir(), elsewhere.mkdir()
    (recipes / "parent.yaml").write_text("base: seed002\ntrain:\n  epochs: 11\n")
    (recipes / "child.yaml").write_text(f"base: {spelling}\nname: child\n")
    (elsewhere / "parent.yaml").write_text("base: seed002\ntrain:\n  epochs: 99\n")   # a decoy
    monkeypatch.chdir(elsewhere)
    assert load_recipe(str(recipes / "child.yaml")).train.epochs == 11
    monkeypatch.chdir(tmp_path)
    assert load_recipe("recipes/child.yaml").train.epochs == 11


def test_base_falls_back_to_a_builtin(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: seed002.yaml\nname: mine\ntrain:\n  epochs: 4\n")
    recipe = load_recipe(str(tmp_path / "mine.yaml"))
    assert recipe.train.epochs == 4 and recipe.model.widths == [66, 132, 264]


def test_a_missing_base_names_where_it_looked(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: nosuch.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_recipe_dict(str(tmp_path / "mine.yaml"))
    message = str(info.value)
    assert "base 'nosuch.yaml' not found" in message and str(tmp_path / "nosuch.yaml") in message


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", "a..b", ".hidden", "", "x" * 65,
                                  "sp ace", "tab\tname"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ConfigError, match="'name' .* must be 1-64 letters"):
        load_recipe("seed002", [f"name={name!r}"] if name else ["name=''"])


@pytest.mark.parametrize("name", ["seed002", "fast-c100", "my_run.v2", "A" * 64])
def test_safe_names_load(name):
    assert load_recipe("seed002", [f"name={name}"]).name == name


def test_a_run_named_outside_runs_is_refused_before_anything_is_written(capsys, fake_cifar, tmp_path):
    (tmp_path / "work").mkdir()
    msg = cli_error(capsys, ["train", "--recipe", "seed002", *TINY, "--data-dir", fake_cifar,
                             "--set", "name=../../escaped"])
    assert "'name'" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
