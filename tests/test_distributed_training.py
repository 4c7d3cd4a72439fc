"""Data-parallel training with real processes: torchrun (torch.distributed.run) starts 2 ranks on
the CPU with gloo, on tiny synthetic data, one thread each.

Tolerance. Two processes cannot reproduce one process bit for bit: DDP adds the two halves'
gradients (one process adds them row after row inside its kernels), SyncBatchNorm's statistics
are sums over the ranks in float64 where BatchNorm's kernel has its own order, and the BN
running statistics of micro-batches are merged after each step instead of updated in sequence.
Each differs from one process in the last bit of float32 (~1e-7); training carries such
differences forward, and the run's own sensitivity grows them: multiplying the one-process run's
initial weights by (1 + 1e-7 N(0, 1)), about one ulp, moved its final weights by 4e-5 after its 8
steps. We assert 5e-5 on every weight and buffer (magnitudes 0.1 to 3). Measured on the 2-core
development machine (torch 2.14.1) while choosing it: 1e-7 (micro-batches) and 4e-7 (SyncBatchNorm)
between 1 and 2 processes, 4e-6 for a 2-process run stopped and resumed by one process. A real
difference is far above the bound: the same run with per-rank BatchNorm (train.sync_bn=false)
differs by 0.2, and a test checks that it is above 1e-2. The recipe trains in fp32 with contiguous
tensors (the CPU's channels-last BatchNorm kernel is itself an order of magnitude less precise) at
lr 0.02 (at 0.1 the same 8 steps amplify rounding about a thousandfold).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cifarkit

SRC = Path(cifarkit.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TOLERANCE = 5e-5
TINY = ["data.verify=false", "data.val_size=100", "data.train_subset=256", "model.stem_width=8", "model.widths=[8,16]",
        "model.blocks=[1,1]", "train.batch_size=64", "train.precision=fp32", "train.warmup_epochs=0",
        "train.channels_last=false", "train.lr=0.02", "train.epochs=2", "eval.tta=none"]
STEPS = 8                      # 256 images / 64 = 4 steps an epoch, 2 epochs


def cli_args(data_dir: Path) -> list[str]:
    args = ["--recipe", "seed002", "--data-dir", str(data_dir), "--device", "cpu"]
    for item in TINY:
        args += ["--set", item]
    return args


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def run(command: list[str], cwd: Path, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=environment(**extra), capture_output=True, text=True, timeout=timeout)


def torchrun(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
               cwd, **extra)


def float_state(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state[key] if key else state


def max_difference(a: dict, b: dict, *, counters: bool = True) -> float:
    """The largest difference of floating tensors; the counters (num_batches_tracked) must be equal."""
    assert a.keys() == b.keys()
    assert not counters or all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# -- one process and two, side by side ----------------------------------------------------------

def train_worker(out: Path, data_dir: Path, overrides: list[str], *, ranks: int) -> list[dict]:
    out.mkdir(parents=True)
    worker = [str(TESTS / "distributed_worker.py"), str(out), str(data_dir), "seed002", *TINY, *overrides]
    done = torchrun(*worker, cwd=out) if ranks == 2 else run([sys.executable, *worker], out)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


@pytest.fixture(scope="module")
def one_process(fake_cifar, tmp_path_factory):
    """The reference: the tiny recipe trained by one process (no micro-batches)."""
    out = tmp_path_factory.mktemp("one") / "out"
    return train_worker(out, fake_cifar, [], ranks=1)[0], out


@pytest.mark.parametrize("overrides, synced", [([], True), (["train.micro_batch=16"], False)],
                         ids=["sync-bn", "micro-batches"])
def test_two_ranks_train_the_weights_one_process_trains(fake_cifar, tmp_path, one_process, overrides, synced):
    """Without micro-batches BatchNorm is synchronized (auto); with 16-image micro-batches each rank's
    32 rows are two whole pieces of the single process, normalized alone, running stats merged."""
    if overrides:
        single = train_worker(tmp_path / "one", fake_cifar, overrides, ranks=1)[0], tmp_path / "one"
    else:
        single = one_process
    ranks = train_worker(tmp_path / "two", fake_cifar, overrides, ranks=2)
    assert [r["sync_bn"] for r in ranks] == [synced, synced]
    assert len(ranks[0]["digests"]) == STEPS
    assert ranks[0]["digests"] == ranks[1]["digests"]                 # identical weights after every step
    assert ranks[0]["exchanges"] == [1] * STEPS      # one gradient exchange a step (the model fits one bucket)
    a, b = (float_state(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1))
    assert max_difference(a, b) == 0.0
    assert max_difference(float_state(single[1] / "rank0.pt"), a) < TOLERANCE
    assert ranks[0]["summary"]["steps"] == single[0]["summary"]["steps"] == STEPS
    for r in ranks:            # each rank scored half the validation batches; gathered, they are the whole
        assert r["val_together"] == r["val_alone"]


def test_per_rank_batchnorm_is_far_outside_the_tolerance(fake_cifar, tmp_path, one_process):
    """The control: each rank normalizing its own 32 rows is a different training, and the
    tolerance above tells it apart by orders of magnitude."""
    train_worker(tmp_path / "per-rank", fake_cifar, ["train.sync_bn=false"], ranks=2)
    single = float_state(one_process[1] / "rank0.pt")
    per_rank = float_state(tmp_path / "per-rank" / "rank0.pt")      # two BN updates a step: counters differ
    assert max_difference(single, per_rank, counters=False) > 1e-2 > 100 * TOLERANCE


def test_host_sync_batchnorm_on_two_halves_is_batchnorm_on_the_whole_batch(tmp_path):
    """The CPU SyncBatchNorm (torch's runs on GPUs only): outputs, gradients and running
    statistics (exponential and cumulative averages, as SWA's recalibration uses) of two ranks
    holding half a batch each, against one BatchNorm over the whole batch."""
    done = torchrun(str(TESTS / "distributed_batchnorm.py"), str(tmp_path / "bn"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"bn.rank{rank}.json").read_text())
        for momentum in ("0.1", "None"):
            assert report[momentum]["output"] < 1e-5            # values of magnitude ~3 after the first conv
            assert report[momentum]["gradients"] < 1e-5         # relative to each gradient's largest entry
            assert report[momentum]["running"] < 1e-5


# -- the command line: one run directory, interrupted and resumed ------------------------------

@pytest.fixture(scope="module")
def two_process_run(fake_cifar, tmp_path_factory):
    """`cifarkit train --nproc 2`, uninterrupted, evaluated, in a folder of its own."""
    cwd = tmp_path_factory.mktemp("nproc")
    done = run([sys.executable, "-m", "cifarkit", "train", *cli_args(fake_cifar), "--out", "run", "--nproc", "2"], cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return cwd, done


def test_nproc_trains_one_run_directory_written_by_rank_zero(two_process_run):
    cwd, done = two_process_run
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]                   # no second run, no runs/ folder
    run_dir = cwd / "run"
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"last.pt", "final.pt", "best.pt"}
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run_dir / "run.json").read_text())["processes"] == {"world_size": 2, "backend": "gloo"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["models"]["final"]["test"]["num_samples"] == 200
    assert done.stdout.count("epoch 2/2 ") == 1 and done.stdout.count("run directory: run") == 1   # rank 0 speaks


def test_sigterm_stops_every_rank_after_the_same_step_and_one_process_resumes(fake_cifar, two_process_run, tmp_path):
    """SIGTERM to the launcher (torchrun's, in cifarkit train --nproc) mid-epoch: both ranks stop
    after the same step, rank 0 writes last.pt, exit 143; one process resumes the run and ends
    where the uninterrupted two-process run ended."""
    reference = two_process_run[0] / "run"
    mark = tmp_path / "mark"
    launcher = ("import sys\nfrom cifarkit.errors import CifarkitError\nfrom cifarkit.train.launch import launch\n"
                "entry = (sys.argv.pop(1),)\ntry:\n    sys.exit(launch(2, sys.argv[1:], entry=entry))\n"
                "except CifarkitError as e:\n    print(f'cifarkit: error: {e}', file=sys.stderr)\n    sys.exit(e.exit_code)\n")
    command = [sys.executable, "-c", launcher, str(TESTS / "distributed_cli.py"), "train", *cli_args(fake_cifar),
               "--out", "run", "--no-eval"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=environment(TEST_STEP_SECONDS="0.5", TEST_MARK_STEP="5",
                                                                    TEST_MARK_FILE=str(mark)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not Path(f"{mark}.rank0").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)                     # during step 6: epoch 2 holds steps 5-8
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received" in err and "cifarkit train --resume run" in err
    stopped = [int(Path(f"{mark}.stopped.rank{r}").read_text()) for r in (0, 1)]
    assert stopped[0] == stopped[1]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert state["step"] == stopped[0] and state["epoch"] == 1 and 0 < state["batch"] < 4    # mid-epoch 2

    done = run([sys.executable, "-m", "cifarkit", "train", "--resume", "run", "--data-dir", str(fake_cifar), "--no-eval"],
               tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = float_state(tmp_path / "run" / "checkpoints" / "final.pt", "model")
    straight = float_state(reference / "checkpoints" / "final.pt", "model")
    assert max_difference(resumed, straight) < TOLERANCE
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (tmp_path / "run", reference)]
    for a, b in zip(*rows):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)


# -- a rank that dies or hangs --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_the_other_rank_exits_with_one_line_when_a_rank_dies_or_hangs(fake_cifar, tmp_path, how):
    """Two ranks started as torchrun starts them (env://), without torchrun, which would itself
    stop the survivor: rank 1 is killed (or stopped) during training; rank 0 must not wait for ever."""
    mark = tmp_path / "mark"
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", TEST_STEP_SECONDS="0.3",
               TEST_MARK_STEP="2", TEST_MARK_FILE=str(mark), CIFARKIT_DIST_TIMEOUT="5")
    command = [sys.executable, str(TESTS / "distributed_cli.py"), "train", *cli_args(fake_cifar), "--out", "run",
               "--no-eval"]
    ranks = [subprocess.Popen(command, cwd=tmp_path, env=environment(RANK=str(r), LOCAL_RANK=str(r), **env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 180
        while not Path(f"{mark}.rank1").exists() and ranks[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ranks[1].send_signal(signal.SIGKILL if how == "dies" else signal.SIGSTOP)
        start = time.monotonic()
        _, err = ranks[0].communicate(timeout=60)
        waited = time.monotonic() - start
    finally:
        for proc in ranks:
            proc.kill()
            proc.communicate()
    assert ranks[0].returncode == 1, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("cifarkit: error:")]
    assert len(lines) == 1 and "rank 0 of 2 lost contact with another process of the run" in lines[0], err[-3000:]
    assert "Traceback" not in err
    assert waited < 60
    if how == "hangs":
        assert "within 5 s" in lines[0] and waited >= 4


# -- the scaling bench ----------------------------------------------------------------------------

def test_bench_nproc_times_the_recipe_alone_and_on_each_number_of_processes(fake_cifar, tmp_path):
    """The mechanics of `cifarkit bench --nproc 2` on the CPU: a plain process, then 1 and 2 ranks
    under torchrun, each a complete bench, side by side in one JSON (the speeds mean nothing here)."""
    command = [sys.executable, "-m", "cifarkit", "bench", *cli_args(fake_cifar), "--set", "train.epochs=1",
               "--seeds", "1", "--nproc", "2", "--out", "scaling.json"]
    done = run(command, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert [row["processes"] for row in result["scaling"]] == ["plain", 1, 2]
    assert [r["processes"] for r in result["runs"].values()] == [1, 1, 2]
    assert all(row["train_images_per_second"] > 0 for row in result["scaling"])
    assert result["ddp_one_rank_vs_plain"] == pytest.approx(result["scaling"][1]["train_images_per_second"]
                                                            / result["scaling"][0]["train_images_per_second"])
    assert len({json.dumps(r["recipe_resolved"]) for r in result["runs"].values()}) == 1
    assert [r["steps"] for r in result["runs"]["2"]["runs"]] == [4]             # the global batch: same steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaling.json"]
