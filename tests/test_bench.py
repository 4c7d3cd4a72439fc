"""`cifarkit bench` end to end on synthetic data: what its JSON holds, and that it holds together."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from cifarkit.bench import yardstick_key
from cifarkit.cli import main

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results"

TINY_FAST94 = ["--set", "data.verify=false", "--set", "data.train_subset=128", "--set", "train.epochs=2",
               "--set", "train.batch_size=32", "--set", "train.micro_batch=16", "--set", "model.widths=[8,16,16]",
               "--set", "train.warmup_epochs=0.5", "--set", "augment.resize_schedule=[[24,1]]"]


@pytest.fixture(scope="module")
def bench_json(fake_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "fast94-tiny.json"
    rc = main(["bench", "--recipe", "fast94", "--seeds", "2", "--first-seed", "3", "--device", "cpu",
               "--data-dir", str(fake_cifar), "--out", str(out), *TINY_FAST94])
    assert rc == 0
    return json.loads(out.read_text())


def test_bench_records_every_seed_and_their_statistics(bench_json):
    runs = bench_json["runs"]
    assert bench_json["seeds"] == [3, 4] == [r["seed"] for r in runs]
    assert all(r["steps"] == 8 for r in runs)                      # 2 epochs x 128 / 32
    for r in runs:
        assert 0 <= r["accuracy"] <= 1
        assert r["seconds"] == pytest.approx(r["train_seconds"] + r["eval_seconds"])
    accs = [r["accuracy"] for r in runs]
    assert bench_json["accuracy"]["mean"] == pytest.approx(statistics.mean(accs))
    assert bench_json["accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
    assert bench_json["seconds"]["median"] == pytest.approx(statistics.median(r["seconds"] for r in runs))
    assert bench_json["target_accuracy"] == 0.94
    p = bench_json["p_value_mean_above_target"]
    assert p is None or 0 <= p <= 1          # None only when both seeds scored the same


def test_bench_records_work_speed_and_where_it_ran(bench_json):
    assert bench_json["warmup_seconds"] > 0
    assert bench_json["forward_flops_per_image"] > 0
    assert bench_json["train_images_per_second"] > 0
    median_train = statistics.median(r["train_seconds"] for r in bench_json["runs"])
    assert bench_json["train_images_per_second"] == pytest.approx(2 * 128 / median_train)
    # epoch 0 trains on 24x24 images (TINY_FAST94's resize schedule), epoch 1 at 32x32: each
    # counted at its own forward FLOPs, three forward passes' worth per training image
    from cifarkit.config import load_recipe
    from cifarkit.models.registry import build_model, flops_per_image
    model = build_model(load_recipe("fast94", ["model.widths=[8,16,16]"]).model, 10)
    per_image = [flops_per_image(model, (1, 3, 24, 24)), bench_json["forward_flops_per_image"]]
    assert per_image[0] < per_image[1]
    assert bench_json["training_flops_per_second"] == pytest.approx(3 * 128 * sum(per_image) / median_train)
    speed = bench_json[yardstick_key(torch.device("cpu"))]
    assert speed["before"] > 0 and speed["after"] > 0
    hw = bench_json["hardware"]
    assert hw["device"] == "cpu" and hw["cpu_count"] >= 1
    assert set(hw["cpu_identity"]) == {"vendor", "family_model_stepping", "flags"}
    assert bench_json["recipe_resolved"]["model"]["widths"] == [8, 16, 16]
    assert "torch" in bench_json["versions"] and "git_commit" in bench_json


EIGHT_EPOCHS_LOOKAHEAD = ["train.epochs=8", "train.lookahead_every=5"]


@pytest.mark.parametrize("result, recipe, overrides", [
    ("fast94-cpu.json", "fast94-muon", []), ("fast94-cpu-seed3.json", "fast94-muon", []),
    ("fast94-cpu-C.json", "fast94-muon", []), ("fast94-ab-cpu.json", "fast94-muon", []),
    ("fast94-ab-cpu-lookahead-24px.json", "fast94", []), ("fast94-ab-cpu-5seeds.json", "fast94", []),
    ("fast94-sgd-cpu-db86576.json", "fast94-sgd", []),
    ("explorations/fast94-ab-cpu-8ep-lookahead.json", "fast94-muon", EIGHT_EPOCHS_LOOKAHEAD),
    ("explorations/fast94-cpu-8ep-lookahead-seeds3-4.json", "fast94-muon", EIGHT_EPOCHS_LOOKAHEAD)])
def test_committed_results_belong_to_the_recipes_of_that_name(result, recipe, overrides):
    """The README quotes these files for these recipes: what ran must be what the recipe says now
    (the name and description aside: the Muon result ran as an exploration file). Keys added to
    the recipe schema since a file was written take their defaults. The fast94-muon files ran as
    fast94 before it took lookahead and 24x24 epochs; the two 8-epoch lookahead files are that
    recipe with two overrides (benchmarks/README.md, "CPU speed"). `model.cpu_kernels` is left out:
    it changes how fast the same model trains on a CPU, not the model (tests/test_models_cpu_kernels.py),
    and the README says which times ran with it. These ran in bf16, which is what the recipes'
    `train.precision: auto` means on these CPUs: each recorded flags show native bf16 (the oldest
    file, from machine A, predates that record; README.md, "Results", says A had AVX-512 bf16)."""
    from cifarkit.config import load_recipe, recipe_from_dict, recipe_to_dict
    bench = json.loads((RESULTS / result).read_text())
    ran = bench["new"]["recipe_resolved"] if "new" in bench else bench["recipe_resolved"]    # an A/B bench: its new side
    ran = recipe_to_dict(recipe_from_dict(ran))
    flags = bench["hardware"].get("cpu_identity", {}).get("flags")
    assert flags is None or {"avx512_bf16", "amx_bf16"} & set(flags)
    assert ran["train"]["precision"] == "bf16"
    ran["train"]["precision"] = "auto"
    now = recipe_to_dict(load_recipe(recipe, ["device=cpu", *overrides]))
    for key in ("name", "description"):
        ran.pop(key), now.pop(key)
    for resolved in (ran, now):
        resolved["model"].pop("cpu_kernels", None)
    assert ran == now


def test_the_cpu_speed_ab_bench_compared_fast94_with_its_kernels_against_the_baseline_without():
    """The README's A/B row: the new side ran fast94 as it is now (cpu_kernels on), the baseline
    side fast94 before the kernels existed."""
    from cifarkit.config import load_recipe
    ab = json.loads((RESULTS / "fast94-ab-cpu.json").read_text())
    assert ab["new"]["recipe_resolved"]["model"]["cpu_kernels"] is True and load_recipe("fast94").model.cpu_kernels
    assert "cpu_kernels" not in ab["baseline"]["recipe_resolved"]["model"]
    assert ab["baseline_commit"] == "71143e1" and len(ab["new"]["runs"]) == len(ab["baseline"]["runs"]) == 3


def test_the_ab_bench_of_fast94_now_ran_three_seeds_each_side_against_71143e1():
    """The README's first fast94 row: fast94 as it is now (lookahead, 24x24 epochs) on the new side,
    fast94 at 71143e1 (9 epochs at 32x32, no lookahead) on the baseline side, seeds 0-2 each."""
    ab = json.loads((RESULTS / "fast94-ab-cpu-lookahead-24px.json").read_text())
    new, baseline = ab["new"]["recipe_resolved"], ab["baseline"]["recipe_resolved"]
    assert (new["train"]["lookahead_every"], new["augment"]["resize_schedule"]) == (5, [[24, 3]])
    assert (baseline["train"]["lookahead_every"], baseline["augment"]["resize_schedule"]) == (0, [])
    assert ab["baseline_commit"] == "71143e1"
    assert [r["seed"] for r in ab["new"]["runs"]] == [r["seed"] for r in ab["baseline"]["runs"]] == [0, 1, 2]


def test_the_five_seed_ab_bench_repeats_the_three_seed_one_on_its_first_seeds():
    """The README's first fast94 row: five seeds each side against fast94 at 71143e1, after the
    im2col buffer (bit-identical gradients). Seeds 0-2 must score exactly what the three-seed bench
    of the same recipe scored, on both sides: training is deterministic per seed, and the kernel
    change did not change what is computed."""
    five = json.loads((RESULTS / "fast94-ab-cpu-5seeds.json").read_text())
    three = json.loads((RESULTS / "fast94-ab-cpu-lookahead-24px.json").read_text())
    assert five["baseline_commit"] == three["baseline_commit"] == "71143e1"
    for side in ("new", "baseline"):
        assert [r["seed"] for r in five[side]["runs"]] == [0, 1, 2, 3, 4]
        assert [r["accuracy"] for r in five[side]["runs"][:3]] == [r["accuracy"] for r in three[side]["runs"]]


def test_the_fp32_runs_on_d_are_fast94_as_it_is_on_a_cpu_without_native_bf16():
    """The README's D rows pool seed 0 of `cifarkit train` with seeds 1-2 of `cifarkit bench`: both
    must have run fast94 in the fp32 that `train.precision: auto` picks on a CPU whose flags show no
    bf16 units, on distinct seeds, and the bench with the recipe fast94 resolves to now."""
    from cifarkit.config import load_recipe, recipe_from_dict, recipe_to_dict
    bench = json.loads((RESULTS / "fast94-cpu-D-seeds1-2.json").read_text())
    train = json.loads((RESULTS / "fast94-cpu-D-train" / "run.json").read_text())
    for record in (bench, train):
        hardware = record["hardware"]
        assert record["precision"] == "fp32" and hardware["native_bf16"] is False
        assert not {"avx512_bf16", "amx_bf16"} & set(hardware["cpu_identity"]["flags"])
        assert hardware["cpu_identity"]["family_model_stepping"] == "25/1/1"
    assert [r["seed"] for r in bench["runs"]] == [1, 2] and train["seed"] == 0
    ran = recipe_to_dict(recipe_from_dict(bench["recipe_resolved"]))
    assert ran == recipe_to_dict(load_recipe("fast94", ["device=cpu"]))


def test_seed_0_on_d_reproduced_from_a_fresh_clone_to_the_last_metric():
    """The README's main job, rerun on D from a fresh clone of a later commit, gave the same test
    results as the first seed-0 run there: every metric of summary.json, not only the accuracy.
    Only the times, the commit and the run's folder may differ."""
    first, again = (RESULTS / "fast94-cpu-D-train", RESULTS / "fast94-cpu-D-train-cbd9d50")
    runs = [json.loads((d / "run.json").read_text()) for d in (first, again)]
    assert runs[0]["git_commit"] != runs[1]["git_commit"]
    for run in runs:
        assert run["seed"] == 0 and run["precision"] == "fp32"
        assert run["hardware"]["cpu_identity"]["family_model_stepping"] == "25/1/1"
    summaries = [json.loads((d / "summary.json").read_text()) for d in (first, again)]
    varying = {"eval_seconds", "git_commit", "run", "train_seconds"}

    def results(summary: dict) -> dict:
        return {k: results(v) if isinstance(v, dict) else v for k, v in summary.items() if k not in varying}
    assert results(summaries[0]) == results(summaries[1])
    assert summaries[1]["test_accuracy"] == 0.9415


def test_the_8_epoch_lookahead_runs_cover_seeds_0_to_4_against_the_same_baseline():
    """benchmarks/README.md pools these five seeds: 0-2 from the A/B bench against fast94 at 71143e1
    (three seeds each side), 3-4 from a later bench of the same variant."""
    explorations = RESULTS / "explorations"
    ab = json.loads((explorations / "fast94-ab-cpu-8ep-lookahead.json").read_text())
    later = json.loads((explorations / "fast94-cpu-8ep-lookahead-seeds3-4.json").read_text())
    assert ab["baseline_commit"] == "71143e1" and len(ab["baseline"]["runs"]) == 3
    assert ab["baseline"]["recipe_resolved"]["train"]["epochs"] == 9
    assert [r["seed"] for r in ab["new"]["runs"] + later["runs"]] == [0, 1, 2, 3, 4]


def test_warm_up_covers_every_epoch_where_a_compiled_graph_changes():
    from cifarkit.bench import warmup_epochs
    from cifarkit.config import load_recipe
    assert warmup_epochs(load_recipe("fast94")) == 1                                 # eager: one epoch
    assert warmup_epochs(load_recipe("fast94", ["train.compile=true"])) == 4         # bias freezes at epoch 3
    assert warmup_epochs(load_recipe("fast94", ["train.compile=true", "augment.resize_schedule=[[24,5]]"])) == 6
    assert warmup_epochs(load_recipe("fast94", ["train.compile=true", "train.epochs=2"])) == 2
    assert warmup_epochs(load_recipe("seed002", ["train.compile=true"])) == 1
