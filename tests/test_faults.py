"""Faults injected into real training processes: kill -9 anywhere, signals, NaN, a full disk.

The promise under test: nothing finished is lost, no file in a run directory is ever torn, and
`cifarkit train --resume` ends with exactly the weights and metrics of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from cifarkit.cli import main
from cifarkit.train.checkpoint import load_checkpoint
from cli_helpers import TINY_SEED002, cli_child

TINY = [*TINY_SEED002, "--set", "train.warmup_epochs=1", "--set", "train.ema_decay=0.9", "--epochs", "3", "--seed", "2"]

# Faults patched into the child process before the CLI starts.
DIE_DURING_SECOND_LAST_PT_WRITE = """
import cifarkit.train.checkpoint as ck
real_open, seen = ck.atomic_open, []
@contextlib.contextmanager
def dying_open(path, mode="w", encoding=None):
    with real_open(path, mode) as f:
        if str(path).endswith("last.pt"):
            seen.append(path)
            if len(seen) == 2:
                class HalfThenDie:
                    def write(self, data):
                        data = bytes(data)
                        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
                        os.kill(os.getpid(), signal.SIGKILL)
                yield HalfThenDie()
                return
        yield f
ck.atomic_open = dying_open
"""

DIE_DURING_EVALUATION = """
import cifarkit.evaluate.report as report
def dying_plot(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
report.plot_roc_curves = dying_plot
"""


def child(args: list[str], patch: str = ""):
    return cli_child(args, patch, threads=2)


def run_child(args, patch="") -> tuple[int, str]:
    proc = child(args, patch)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def final_weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "final.pt")["model"]


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in rows]


def assert_nothing_torn(run: Path) -> None:
    """Every file a crash could have been writing is complete and parses."""
    for pt in run.glob("checkpoints/*.pt"):
        load_checkpoint(pt)
    for js in run.glob("*.json"):
        json.loads(js.read_text())
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(line)
    from PIL import Image
    for png in run.glob("plots/*.png"):
        with Image.open(png) as im:
            im.verify()


def assert_same_result(reference: Path, run: Path) -> None:
    a, b = final_weights(reference), final_weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert metrics(reference) == metrics(run)


@pytest.fixture(scope="module")
def reference(fake_cifar, tmp_path_factory):
    """An uninterrupted run (in a child process, like the interrupted ones) and its wall time."""
    run = tmp_path_factory.mktemp("ref") / "run"
    start = time.perf_counter()
    rc, log = run_child(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run)])
    assert rc == 0, log
    return run, time.perf_counter() - start


def resume_until_done(run: Path, data: Path) -> str:
    rc, log = run_child(["train", "--resume", str(run), "--data-dir", str(data)])
    assert rc == 0, log
    return log


@pytest.mark.slow
def test_kill9_at_random_moments_then_resume_is_bit_identical(reference, fake_cifar, tmp_path):
    ref_run, ref_seconds = reference
    rng = random.Random(0)
    for trial in range(2):
        run = tmp_path / f"run{trial}"
        proc = child(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run)])
        time.sleep(rng.uniform(0.3, 0.9) * ref_seconds)
        proc.kill()                                  # SIGKILL: no handler, no cleanup
        proc.communicate()
        if not (run / "recipe.yaml").exists():      # died before the run directory existed
            continue
        assert_nothing_torn(run)
        resume_until_done(run, fake_cifar)
        assert_nothing_torn(run)
        assert_same_result(ref_run, run)
        assert (run / "summary.json").is_file()


def test_kill9_during_a_checkpoint_write_keeps_the_previous_checkpoint(reference, fake_cifar, tmp_path):
    run = tmp_path / "run"
    rc, log = run_child(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run)],
                        DIE_DURING_SECOND_LAST_PT_WRITE)
    assert rc == -signal.SIGKILL, log
    state = load_checkpoint(run / "checkpoints" / "last.pt")     # the epoch-1 checkpoint, whole
    assert state["state"]["epoch"] == 1
    assert list((run / "checkpoints").glob(".*.tmp")), "the torn write stayed in its temporary file"
    assert_nothing_torn(run)
    resume_until_done(run, fake_cifar)
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert_same_result(reference[0], run)


def test_kill9_during_evaluation_then_evaluate_again(reference, fake_cifar, tmp_path):
    run = tmp_path / "run"
    rc, log = run_child(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run)], DIE_DURING_EVALUATION)
    assert rc == -signal.SIGKILL, log
    assert not (run / "summary.json").exists()
    assert_nothing_torn(run)
    assert main(["evaluate", str(run), "--data-dir", str(fake_cifar)]) == 0
    ref = json.loads((reference[0] / "summary.json").read_text())
    got = json.loads((run / "summary.json").read_text())
    assert got["models"] == ref["models"] and got["selected"] == ref["selected"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_exits_with_the_conventional_code(reference, fake_cifar, tmp_path, sig, code):
    run = tmp_path / "run"
    proc = child(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run)])
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:   # epoch 1 done
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert proc.returncode == code, out + err
    assert f"cifarkit train --resume {run}" in err
    assert "Traceback" not in err
    resume_until_done(run, fake_cifar)
    assert_same_result(reference[0], run)


def _poison_step(monkeypatch, bad_step: int):
    from cifarkit.train import trainer as training
    original = training.Trainer._step

    def poisoned(self, x, y, epoch, batch):
        if self.state.step == bad_step:
            x = x * float("nan")
        return original(self, x, y, epoch, batch)

    monkeypatch.setattr(training.Trainer, "_step", poisoned)


def test_nonfinite_loss_stops_naming_step_lr_and_checkpoint(fake_cifar, tmp_path, monkeypatch, capsys):
    _poison_step(monkeypatch, bad_step=9)             # in epoch 2 (5 steps per epoch)
    run = tmp_path / "run"
    rc = main(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run), "--no-eval"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert "non-finite loss or gradients at step 9 (epoch 2, lr " in err
    assert f"last good checkpoint: {run / 'checkpoints' / 'last.pt'} (after epoch 1)" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1


def test_nonfinite_step_can_be_skipped_instead(fake_cifar, tmp_path, monkeypatch):
    _poison_step(monkeypatch, bad_step=4)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run), "--no-eval",
                 "--set", "train.on_nonfinite=skip"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["train"]["skipped_steps"] == 1
    weights = final_weights(run)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(fake_cifar, tmp_path, monkeypatch, capsys):
    import cifarkit.train.checkpoint as ck
    real_open, seen = ck.atomic_open, []

    def full_disk(path, mode="w", encoding=None):
        if str(path).endswith("last.pt"):
            seen.append(path)
            if len(seen) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode)

    monkeypatch.setattr(ck, "atomic_open", full_disk)
    run = tmp_path / "run"
    rc = main(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(run), "--no-eval"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert "No space left on device; the previous checkpoint there is intact" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1


def test_unwritable_output_fails_before_training(fake_cifar, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc = main(["train", *TINY, "--data-dir", str(fake_cifar), "--out", str(blocker / "run")])
    err = capsys.readouterr()
    assert rc != 0 and "cifarkit: error:" in err.err and "epoch 1" not in err.out


