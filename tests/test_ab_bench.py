"""benchmarks/ab_bench.py end to end on tiny synthetic data: both sides run, alternate, and the JSON
holds what the comparison needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifarkit.bench import yardstick
from cifarkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_ab_bench_alternates_and_records_both_sides(fake_cifar, tmp_path):
    tiny = ["data.verify=false", "data.train_subset=64", "train.epochs=1", "train.batch_size=32",
            "train.micro_batch=0", "model.widths=[8,16,16]"]
    out = tmp_path / "ab.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "ab_bench.py"), "--recipe", "fast94", "--baseline", "HEAD",
               "--seeds", "2", "--device", "cpu", "--data-dir", str(fake_cifar), "--json", str(out),
               *[a for o in tiny for a in ("--set-both", o)], "--set", "train.label_smoothing=0.1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split(" seed")[0] for line in result.stdout.splitlines() if " seed " in line]
    assert lines == ["baseline", "new", "new", "baseline"]
    ab = json.loads(out.read_text())
    assert [r["seed"] for r in ab["baseline"]["runs"]] == [r["seed"] for r in ab["new"]["runs"]] == [0, 1]
    assert ab["new"]["recipe_resolved"]["train"]["label_smoothing"] == 0.1
    assert ab["baseline"]["recipe_resolved"]["train"]["label_smoothing"] == 0.2
    ratio = ab["new"]["seconds"]["median"] / ab["baseline"]["seconds"]["median"]
    assert ab["median_seconds_ratio_new_over_baseline"] == ratio
    speed = yardstick(ab)
    assert speed["before"] > 0 and speed["after"] > 0
    assert 0 < ab["new_training_flops_share_of_yardstick"]


def test_explore_appends_one_line_per_run_with_its_overrides(fake_cifar, tmp_path):
    """benchmarks/explore.py, the one-seed screen: each run appends a JSON line saying what ran."""
    out = tmp_path / "runs.jsonl"
    tiny = ["data.verify=false", "data.train_subset=64", "train.batch_size=32", "train.micro_batch=0",
            "model.widths=[8,16,16]"]
    for epochs in (1, 2):
        command = [sys.executable, str(ROOT / "benchmarks" / "explore.py"), "--recipe", "fast94", "--name",
                   f"e{epochs}", "--seed", "1", "--data-dir", str(fake_cifar), "--jsonl", str(out),
                   *[a for o in [*tiny, f"train.epochs={epochs}"] for a in ("--set", o)]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["name"], r["seed"], r["steps"]) for r in runs] == [("e1", 1, 2), ("e2", 1, 4)]
    assert runs[1]["overrides"][-1] == "train.epochs=2" and "torch" in runs[1]["versions"]
    assert all(0 <= r["accuracy"] <= 1 and r["train_seconds"] > 0 for r in runs)


def test_explore_refuses_a_bad_override_in_one_line_and_appends_nothing(fake_cifar, tmp_path):
    out = tmp_path / "runs.jsonl"
    command = [sys.executable, str(ROOT / "benchmarks" / "explore.py"), "--name", "bad", "--data-dir", str(fake_cifar),
               "--jsonl", str(out), "--set", "train.epochz=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3 and len(lines) == 1 and lines[0].startswith("explore: error: "), result.stderr
    assert "epochz" in lines[0] and not out.exists()


# Each timing script checks where its result goes before it times anything: a result that cannot be
# written ends the script at once in one line with cifarkit's exit code for it (9), no traceback.
SCRIPT_ARGS = {
    "ab_bench": ["--baseline", "HEAD", "--json"],
    "step_ab": ["--variant", "plain=", "--json"],
    "weight_grad_ab": ["--json"],
    "profile_step": ["--json"],
    "throughput": ["--json"],
    "selective_tta": ["no-such-run", "--json"],
    "explore": ["--name", "x", "--data-dir", "no-such-data", "--jsonl"],
    "precision_speed": ["--json"],
}


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_a_result_path_that_cannot_be_written_stops_the_script_at_once(script, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "result.json"
    command = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *SCRIPT_ARGS[script], str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 9 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"{script}: error: cannot write to {out}") and result.stdout == ""


def test_precision_speed_measures_both_precisions_and_names_the_machine(tmp_path):
    out = tmp_path / "precision.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "precision_speed.py"), "--json", str(out),
               "--rounds", "1", "--matmul-size", "64"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    speed = json.loads(out.read_text())
    for kind in ("matmul_gflops", "conv_train_gflops"):
        assert set(speed[kind]) == {"fp32", "bf16"} and min(speed[kind].values()) > 0
        assert speed["bf16_over_fp32"][kind] == speed[kind]["bf16"] / speed[kind]["fp32"]
    assert speed["native_bf16"] == speed["hardware"]["native_bf16"]
    assert speed["matmul_size"] == 64 and "torch" in speed["versions"]


def test_step_ab_times_the_epoch_it_is_asked_for(tmp_path):
    # fast94's epoch 3 is its first at 32x32 and its first with the whitening bias frozen; step_ab
    # and profile_step time such steps with --epoch 3 instead of pretending with overrides
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    from throughput import random_trainer

    from cifarkit.config import load_recipe
    recipe = load_recipe("fast94", ["device=cpu", "train.batch_size=32", "train.micro_batch=16", "model.widths=[8,16,16]"])
    seen = {}
    for epoch in (0, 3):
        trainer, batches = random_trainer(recipe, torch.device("cpu"), 2, epoch)
        seen[epoch] = (next(batches)[0].shape[-1], trainer.model.whiten.bias.requires_grad)
    assert seen == {0: (24, True), 3: (32, False)}
    with pytest.raises(ConfigError, match="epoch 9 is not one of the recipe's epochs 0-8"):
        random_trainer(recipe, torch.device("cpu"), 2, 9)

    out = tmp_path / "steps.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "step_ab.py"), "--recipe", "fast94", "--epoch", "3",
               "--rounds", "1", "--variant", "tiny=train.batch_size=32,train.micro_batch=16,model.widths=[8,16,16]",
               "--variant", "tiny_plain=train.batch_size=32,train.micro_batch=16,model.widths=[8,16,16],model.cpu_kernels=false",
               "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(out.read_text())
    assert steps["epoch"] == 3 and set(steps["median_step_seconds"]) == {"tiny", "tiny_plain"}
    assert steps["ratio_to_tiny"]["tiny"] == 1 and all(len(s) == 1 for s in steps["step_seconds"].values())
