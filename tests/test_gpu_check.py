"""benchmarks/gpu_check.py on the CPU: the dry run end to end on synthetic data (every JSON file it
promises), the plan and its budget logic, and the data check that guards a real run."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fakes import make_fake_cifar

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["pytest-cuda", "bench-fast94", "bench-fast95", "bench-fast96", "throughput", "train-seed002"]


def load_plan_module():
    spec = importlib.util.spec_from_file_location("gpu_plan", ROOT / "benchmarks" / "gpu_plan.py")
    module = sys.modules["gpu_plan"] = importlib.util.module_from_spec(spec)     # dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


plan = load_plan_module()


def gpu_check(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    return make_fake_cifar(tmp_path_factory.mktemp("small_cifar"), n_train=300, n_test=50)


# --- the dry run ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_every_file(small_cifar, tmp_path):
    out = tmp_path / "check"
    result = gpu_check("--data-dir", small_cifar, "--out", out, "--device", "cpu", "--dry-run", "--unverified-data",
                       "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.index("plan for") < result.stdout.index("pytest-cuda: running")   # the plan comes first
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and status["dry_run"] is True
    assert [(s["name"], s["status"]) for s in status["plan"]] == [(name, "done") for name in STEPS]
    assert all(s["estimate_s"] > 0 and s["seconds"] > 0 for s in status["plan"])
    check = status["data_check"]
    assert check["content_verified"] is False and "NOT verified" in check["note"] and check["train"] == 300
    for name in STEPS:
        assert (out / f"{name}.json").is_file() and (out / f"{name}.log").is_file(), name

    tests = json.loads((out / "pytest-cuda.json").read_text())
    assert tests["returncode"] == 0 and tests["failed"] == []
    if not torch.cuda.is_available():
        assert tests["skipped"] > 0 and "passed" not in tests      # every selected test needs a GPU
    for recipe in ("fast94", "fast95", "fast96"):
        bench = json.loads((out / f"bench-{recipe}.json").read_text())
        assert bench["seeds"] == [0] and bench["warmup_seconds"] > 0
        assert bench["recipe_resolved"]["train"]["epochs"] == 1 and bench["recipe_resolved"]["data"]["verify"] is False
        headline = status["results"][f"bench-{recipe}"]
        assert headline["seeds"] == 1 and headline["median_s"] == bench["seconds"]["median"]
        assert headline["target_s"] > 0 and headline["under_5M_parameters"] is True
    throughput = json.loads((out / "throughput.json").read_text())["results"]
    assert [(r["batch_size"], 0 <= r["batch_preparation_share"] <= 1) for r in throughput] == [(8, True)] * 2
    train = json.loads((out / "train-seed002.json").read_text())
    assert train["complete"] and train["epochs_done"] == 1 and 0 <= train["test_accuracy"] <= 1
    assert train["published_accuracy"] == 0.9556
    kept = {p.name for p in (out / "train-seed002").iterdir()}
    assert {"summary.json", "metrics.jsonl", "run.json", "recipe.yaml"} <= kept
    assert not list((out / "train-seed002").rglob("*.pt"))               # the weights stay in the runs folder
    assert list((tmp_path / "runs").rglob("final.pt"))


def test_a_tiny_budget_skips_every_step_and_says_why(small_cifar, tmp_path):
    out = tmp_path / "check"
    result = gpu_check("--data-dir", small_cifar, "--out", out, "--device", "cpu", "--dry-run", "--unverified-data",
                       "--budget-s", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and [s["status"] for s in status["plan"]] == ["skipped"] * len(STEPS)
    assert all(s["note"] for s in status["plan"]) and status["results"] == {}
    assert not list(out.glob("*.log"))


def test_only_runs_the_steps_asked_for(small_cifar, tmp_path):
    out = tmp_path / "check"
    result = gpu_check("--data-dir", small_cifar, "--out", out, "--device", "cpu", "--dry-run", "--unverified-data",
                       "--only", "throughput", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert [s["status"] for s in status["plan"]] == ["skipped"] * 4 + ["done", "skipped"]
    assert status["plan"][0]["note"] == "not asked for (--only)" and list(status["results"]) == ["throughput"]
    assert (out / "throughput.json").is_file() and not (out / "bench-fast94.json").exists()


# --- the data check ------------------------------------------------------------------------------

def test_synthetic_data_is_refused_unless_declared(small_cifar, tmp_path):
    refused = gpu_check("--data-dir", small_cifar, "--out", tmp_path / "a", "--device", "cpu", "--dry-run",
                        cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "300 images, not the 50000 of CIFAR-10" in refused.stderr
    status = json.loads((tmp_path / "a" / "status.json").read_text())
    assert status["state"].startswith("stopped") and status["plan"] == [] and "error" in status["data_check"]
    real_run = gpu_check("--data-dir", small_cifar, "--out", tmp_path / "b", "--unverified-data", cwd=tmp_path)
    assert real_run.returncode == 2 and "--unverified-data is for dry runs" in real_run.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.realdata
def test_a_tampered_copy_of_cifar10_stops_the_check(real_data, tmp_path):
    archive = real_data / "cifar-10-python.tar.gz" if real_data.is_dir() else real_data
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "copy", filter="data")
    test_batch = next((tmp_path / "copy").rglob("test_batch"))
    batch = pickle.loads(test_batch.read_bytes(), encoding="bytes")
    batch[b"labels"][0] = (batch[b"labels"][0] + 1) % 10                  # one label of 60,000
    test_batch.write_bytes(pickle.dumps(batch, protocol=2))
    result = gpu_check("--data-dir", tmp_path / "copy", "--out", tmp_path / "out", "--device", "cpu", "--dry-run",
                       cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "test labels do not match official CIFAR-10" in result.stderr
    assert not list((tmp_path / "out").glob("*.log"))                      # nothing ran


@pytest.mark.realdata
def test_the_real_copy_passes_the_check(real_data, tmp_path):
    result = gpu_check("--data-dir", real_data, "--out", tmp_path / "out", "--device", "cpu", "--dry-run",
                       "--budget-s", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads((tmp_path / "out" / "status.json").read_text())["data_check"]
    assert check["content_verified"] is True and (check["train"], check["test"]) == (50000, 10000)


# --- the plan ------------------------------------------------------------------------------------

def bench(name: str, seeds: int, per_seed: float, priority: int) -> plan.Step:
    return plan.Step(name, "bench", fixed_s=10, priority=priority, seeds=seeds, full_seeds=seeds, per_seed_s=per_seed)


def steps_for_budget() -> list:
    return [plan.Step("tests", "pytest", 20, priority=5), bench("b25", 25, 4, 3), bench("b5", 5, 10, 2),
            bench("b1", 1, 40, 1), plan.Step("throughput", "throughput", 20, priority=4),
            plan.Step("train", "train", 100, priority=0, optional=True)]


def test_the_plan_is_kept_whole_when_it_fits():
    steps = steps_for_budget()
    plan.fit_plan(steps, 1000)                 # 20 + 110 + 60 + 50 + 20 + 100 = 360
    assert [s.status for s in steps] == ["planned"] * 6 and [s.seeds for s in steps[1:4]] == [25, 5, 1]


def test_optional_steps_go_first_then_seeds_then_whole_steps():
    steps = steps_for_budget()
    plan.fit_plan(steps, 300)                  # without "train" 260: fits, nothing else changes
    assert [s.status for s in steps] == ["planned"] * 5 + ["skipped"] and "as time allows" in steps[5].note
    steps = steps_for_budget()
    plan.fit_plan(steps, 200)                  # 60 s less: seeds come off whichever bench spends most on them
    assert [s.status for s in steps[:5]] == ["planned"] * 5
    assert [s.seeds for s in steps[1:4]] == [12, 4, 1] and "12 of 25 seeds" in steps[1].note
    assert sum(s.estimate_s for s in steps if s.status == "planned") <= 200
    steps = steps_for_budget()
    plan.fit_plan(steps, 120)                  # even at 2 seeds each the plan needs 138 s: b1 is skipped,
    assert [s.status for s in steps] == ["planned", "planned", "planned", "skipped", "planned", "skipped"]
    assert [s.seeds for s in steps[1:3]] == [7, 3]          # and the 50 s it frees go back to seeds
    assert sum(s.estimate_s for s in steps if s.status == "planned") <= 120


@pytest.mark.parametrize("budget", [1, -5])      # -5: the checks before the plan took longer than the budget
def test_a_tiny_budget_skips_everything_with_a_reason(budget):
    steps = steps_for_budget()
    plan.fit_plan(steps, budget)
    assert [s.status for s in steps] == ["skipped"] * 6 and all("does not fit" in s.note for s in steps[:5])


def plan_args(tmp_path, device="cuda", dry_run=False):
    return SimpleNamespace(device=device, dry_run=dry_run, verified=True, data_dir=tmp_path / "data",
                           out=tmp_path / "out", runs_dir=tmp_path / "runs")


@pytest.fixture(scope="module")
def models():
    from cifarkit.config import load_recipe
    from cifarkit.models.registry import build_model, count_parameters, flops_per_image
    nets = {name: build_model(load_recipe(name).model) for name in ("fast94", "fast95", "fast96", "seed002", "seed004")}
    return {name: {"flops": flops_per_image(m), "params": count_parameters(m)} for name, m in nets.items()}


def test_the_full_plan_for_a_gpu(models, tmp_path):
    from cifarkit.config import load_recipe
    h200 = plan.Speed(plan.GPU_PEAK_BF16["H200"] * plan.ASSUMED_UTILISATION, plan.PIECE_S["cuda"], load_s=5)
    steps = plan.make_plan(plan_args(tmp_path), models, {"train": 50000, "test": 10000}, h200)
    assert [s.name for s in steps] == STEPS and [s.seeds for s in steps[1:4]] == [25, 5, 1]
    for step in steps[1:4]:
        sets = [step.args[i + 1] for i, a in enumerate(step.args) if a == "--set"]
        assert ("train.compile=true" in sets) == (step.name == "bench-fast94")
        assert "data.download=false" in sets and load_recipe(step.args[1], sets)     # every override is valid
    assert steps[5].optional and "--out" in steps[5].args
    # The estimates follow the work: more FLOPs and epochs, more seconds; a slower GPU, longer steps.
    assert steps[1].per_seed_s < steps[2].per_seed_s < steps[3].per_seed_s < steps[5].estimate_s
    a100 = plan.Speed(plan.GPU_PEAK_BF16["A100"] * plan.ASSUMED_UTILISATION, plan.PIECE_S["cuda"], load_s=5)
    slower = plan.make_plan(plan_args(tmp_path), models, {"train": 50000, "test": 10000}, a100)
    assert all(s.estimate_s < t.estimate_s for s, t in zip(steps[1:], slower[1:]))
    on_cpu = plan.make_plan(plan_args(tmp_path, "cpu"), models, {"train": 50000, "test": 10000}, a100)
    assert not any("train.compile=true" in s.args for s in on_cpu)


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                        ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("Tesla V100-SXM2-16GB", 312e12)])
def test_the_published_peak_of_each_gpu(name, peak, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    found, source = plan.peak_flops(torch.device("cuda"))
    assert found == peak and name in source
    assert ("not in the table" in source) == name.startswith("Tesla")
