"""Which model a run's headline is: chosen on the validation split, or fixed by the recipe."""

import pytest

from cifarkit.config import load_recipe
from cifarkit.errors import ConfigError
from cifarkit.evaluate.report import select

MODELS = {"final": {"val_accuracy": 0.80}, "best": {"val_accuracy": 0.82}, "ema": {"val_accuracy": 0.81},
          "ensemble": {"val_accuracy": 0.82}}


def test_validation_picks_the_best_and_the_ensemble_wins_ties():
    assert select(MODELS) == "ensemble"
    assert select({k: v for k, v in MODELS.items() if k != "ensemble"}) == "best"


def test_without_a_validation_split_the_ensemble_else_final():
    assert select({"final": {}, "ema": {}, "ensemble": {}}) == "ensemble"
    assert select({"final": {}, "ema": {}}) == "final"


def test_a_recipe_can_fix_the_deployed_model():
    assert select(MODELS, "ema") == "ema"                 # reference 004 deployed its best EMA
    assert select(MODELS, "swa") == "ensemble"            # not trained: back to validation


def test_fixed_selections_are_validated_in_the_recipe():
    assert load_recipe("seed004").eval.select == "ema" and load_recipe("seed004").train.ema_keep == "best"
    assert load_recipe("seed000").eval.select == "ensemble"
    with pytest.raises(ConfigError, match="at least two"):
        load_recipe("seed002", ["eval.select=ensemble"])
    with pytest.raises(ConfigError, match="needs a validation split"):
        load_recipe("fast94", ["train.ema_decay=0.9", "train.ema_keep=best"])
    with pytest.raises(ConfigError, match="ema_decay"):
        load_recipe("seed001", ["train.ema_keep=at_best"])
