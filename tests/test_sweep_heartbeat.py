"""A worker killed in the middle of a trial (SIGKILL: no chance to clean up) loses only that trial:
its heartbeat stops, the next worker marks it failed and runs it again from the queue with the
same parameters (Optuna's heartbeat and RetryHeartbeatStaleTrialCallback), and the study goes on."""

from __future__ import annotations

import signal
import time

import optuna
from optuna.trial import TrialState

from sweep_fakes import TINY_RECIPE, start_worker, sweep_command, write_inputs

LONG_SPACE = """\
trial: {epochs: 40}
pruner: {name: none}
params:
  train.lr: {type: float, low: 0.01, high: 0.2, log: true}
"""


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_trial_is_failed_and_requeued(fake_cifar, tmp_path):
    write_inputs(tmp_path, TINY_RECIPE, LONG_SPACE)
    storage = f"sqlite:///{tmp_path}/runs/hb/study.db"
    first = start_worker(tmp_path, sweep_command(fake_cifar, "hb", 2, "--heartbeat", "1"), tmp_path / "first.log")
    run = tmp_path / "runs" / "hb" / "trial-0"
    try:
        # killed once trial 0 has trained an epoch and checkpointed it
        _wait_for(lambda: first.poll() is None and (run / "checkpoints" / "last.pt").is_file(), 300,
                  "the first worker's first checkpoint: " + (tmp_path / "first.log").read_text()[-2000:])
    finally:
        first.kill()
        first.wait()
    study = optuna.load_study(study_name="hb", storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]     # nobody has noticed yet
    time.sleep(2.5)                                      # past the grace period of two heartbeats

    second = start_worker(tmp_path, sweep_command(fake_cifar, "hb", 1, "--heartbeat", "1"), tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    trials = optuna.load_study(study_name="hb", storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1]
    killed, retried = trials
    assert killed.state == TrialState.FAIL
    assert retried.state == TrialState.COMPLETE and retried.system_attrs["failed_trial"] == 0
    assert retried.params == killed.params
    assert (run / "checkpoints" / "last.pt").is_file()   # the killed trial's run can still be resumed
    assert len((tmp_path / "runs" / "hb" / "trial-1" / "metrics.jsonl").read_text().splitlines()) == 40


def test_a_stopped_worker_marks_its_trial_failed_and_exits_with_the_signal_code(fake_cifar, tmp_path):
    write_inputs(tmp_path, TINY_RECIPE, LONG_SPACE)
    worker = start_worker(tmp_path, sweep_command(fake_cifar, "stop", 2), tmp_path / "worker.log")
    run = tmp_path / "runs" / "stop" / "trial-0"
    try:
        _wait_for(lambda: worker.poll() is None and (run / "metrics.jsonl").is_file(), 300,
                  "the first epoch: " + (tmp_path / "worker.log").read_text()[-2000:])
    finally:
        worker.send_signal(signal.SIGTERM)
        rc = worker.wait(timeout=120)
    log = (tmp_path / "worker.log").read_text()
    assert rc == 143, log[-2000:]
    assert "cifarkit: error:" in log.splitlines()[-1] and "--resume" in log.splitlines()[-1]
    trials = optuna.load_study(study_name="stop", storage=f"sqlite:///{tmp_path}/runs/stop/study.db").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert (run / "checkpoints" / "last.pt").is_file()   # written on the way out: the run can be resumed
