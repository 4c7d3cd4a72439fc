import pytest

from cifarkit.config import (apply_overrides, builtin_recipe_names, dump_recipe, load_recipe, recipe_diff,
                             recipe_from_dict, recipe_to_dict)
from cifarkit.errors import ConfigError
from cifarkit.models.specs import FastNetSpec, ResNetSpec


def test_every_builtin_recipe_loads_and_round_trips():
    names = builtin_recipe_names()
    assert {"seed000", "seed001", "seed002", "seed003", "seed004"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name
        again = recipe_from_dict(recipe_to_dict(recipe))
        assert recipe_to_dict(again) == recipe_to_dict(recipe)
        import yaml
        assert yaml.safe_load(dump_recipe(recipe)) == recipe_to_dict(recipe)


@pytest.mark.parametrize("data, message", [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch'; did you mean 'train.epochs'?"),
    ({"trian": {}}, "did you mean 'train'?"),
    ({"train": {"lr": "fast"}}, "'train.lr' must be a number, got 'fast'"),
    ({"train": {"epochs": 2.5}}, "'train.epochs' must be an integer"),
    ({"train": {"nesterov": "yes"}}, "'train.nesterov' must be true or false"),
    ({"train": {"optimizer": "adam"}}, "'train.optimizer' must be one of"),
    ({"train": {"lr": -1}}, "'train.lr' must be positive"),
    ({"augment": {"mixup_p": 0.7, "cutmix_p": 0.5}}, "must be <= 1"),
    ({"model": {"arch": "vit"}}, "unknown model.arch 'vit'"),
    ({"model": {"widths": [8, 16], "blocks": [1]}}, "'model.widths' has 2 stages but 'model.blocks' has 1"),
    ({"model": {"arch": "resnet", "whiten_width": 24}}, "unknown key 'model.whiten_width'"),
    ({"data": {"val_size": 0}, "train": {"early_stopping_patience": 3}}, "needs a validation split"),
    ({"eval": {"ensemble": ["best", "mean"]}}, "members must be"),
    ({"train": {"whiten_bias_lr_scale": 64}}, "need 'model.arch: fastnet'"),
    ({"train": {"whiten_bias_decay": True}}, "need 'model.arch: fastnet'"),
    ({"model": {"arch": "fastnet"}, "train": {"whiten_bias_lr_scale": 0}}, "must be positive"),
])
def test_bad_recipes_fail_with_one_clear_message(data, message):
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_model_section_picks_the_spec_by_arch():
    assert isinstance(recipe_from_dict({}).model, ResNetSpec)
    assert isinstance(recipe_from_dict({"model": {"arch": "fastnet"}}).model, FastNetSpec)


def test_overrides_parse_yaml_values_and_nest():
    data = apply_overrides({"train": {"epochs": 5}}, ["train.epochs=7", "train.nesterov=true",
                                                       "model.widths=[8, 16]", "seed=3"])
    assert data == {"train": {"epochs": 7, "nesterov": True}, "model": {"widths": [8, 16]}, "seed": 3}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])
    recipe = load_recipe("seed002", ["train.epochs=3"])
    assert recipe.train.epochs == 3 and recipe.model.widths == [66, 132, 264]


def test_unknown_recipe_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match="unknown recipe 'seed02'; did you mean 'seed002'"):
        load_recipe("seed02")


def test_recipe_diff_lists_changed_keys():
    a = recipe_to_dict(load_recipe("seed002"))
    b = recipe_to_dict(load_recipe("seed002", ["train.lr=0.2", "augment.erasing_p=0"]))
    diffs = recipe_diff(a, b)
    assert diffs == ["augment.erasing_p: 0.5 -> 0.0", "train.lr: 0.1 -> 0.2"]


def test_a_recipe_can_start_from_a_base(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("base: seed002\nname: mine\ntrain:\n  epochs: 7\naugment:\n  erasing_p: 0.0\n")
    recipe = load_recipe(str(child))
    assert recipe.name == "mine" and recipe.train.epochs == 7 and recipe.augment.erasing_p == 0.0
    assert recipe.train.lr == 0.1 and recipe.augment.policy == "randaugment"   # inherited
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="loops"):
        load_recipe(str(loop))
