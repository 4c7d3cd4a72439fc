"""The README's tables say what users rely on: every built-in recipe has a row in the Recipes table,
with the recipe's own parameter count and epochs; the reference rows name the EMA each recipe
keeps; the bad-input and fault suites have as many cases as the table says."""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from cifarkit.config import builtin_recipe_names, load_recipe
from cifarkit.models.registry import build_model, count_parameters

README = Path(__file__).parents[1] / "README.md"


def table_lines(header: str) -> list[str]:
    """The lines of the README table under `header`, up to the blank line that ends it."""
    return README.read_text().split(header, 1)[1].split("\n\n", 1)[0].splitlines()


def cells(line: str) -> list[str]:
    """The stripped cells of one table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def recipe_rows() -> dict[str, tuple[int, int]]:
    """{name: (parameters, epochs)} from the rows of the README's Recipes table."""
    rows = {}
    for line in table_lines("| recipe | model | parameters | epochs | what it is |"):
        row = cells(line)
        if len(row) == 5 and re.fullmatch(r"`[\w-]+`", row[0]):
            rows[row[0].strip("`")] = (int(row[2].replace(",", "")), int(row[3]))
    return rows


def test_every_builtin_recipe_has_a_row_with_its_parameters_and_epochs():
    rows = recipe_rows()
    assert sorted(rows) == sorted(builtin_recipe_names())
    for name, (parameters, epochs) in rows.items():
        recipe = load_recipe(name)
        model = build_model(recipe.model, recipe.data.num_classes)
        assert (count_parameters(model), recipe.train.epochs) == (parameters, epochs), name


def reference_rows() -> dict[str, str]:
    """{recipe name: its row} from the README's reference-recipe table (a row may name two recipes)."""
    rows = {}
    for line in table_lines("| recipe | what it is | its claim | measured here | deviations from the original code |"):
        for name in re.findall(r"`([\w-]+)`", cells(line)[0]):
            rows[name] = line
    return rows


def test_the_reference_table_says_which_ema_each_recipe_keeps():
    # The table once called the kept EMA "pending" after the recipes already kept it as the originals
    # did; each row now names its recipe's setting, and this keeps the two in step.
    rows = reference_rows()
    assert {"seed000", "seed001", "seed002", "seed003", "seed004"} <= set(rows)
    for name, row in rows.items():
        keep = load_recipe(name).train.ema_keep
        if keep == "last":
            assert "ema_keep" not in row, name
        else:
            assert f"`train.ema_keep: {keep}`" in row, name


def test_the_suite_table_counts_each_suites_cases():
    claimed = {}
    for line in table_lines("| suite | cases | what every case asserts |"):
        row = cells(line)
        if len(row) == 3 and re.fullmatch(r"`tests/\w+\.py`", row[0]):
            claimed[row[0].strip("`")] = int(row[1])
    assert len(claimed) >= 5, "the suite table was not found: this test checks nothing"
    root = README.parent
    listing = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *claimed],
                             cwd=root, capture_output=True, text=True, check=True).stdout
    collected = Counter(line.split("::", 1)[0] for line in listing.splitlines() if "::" in line)
    assert dict(collected) == claimed
