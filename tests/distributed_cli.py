"""`cifarkit` as the distributed tests run it: the real command line, plus two hooks the tests
need to act at a known point of training, set through the environment:

    TEST_STEP_SECONDS=S     every optimizer step takes at least S seconds (time to act mid-epoch)
    TEST_MARK_STEP=K        after step K, create the file TEST_MARK_FILE.rank<R> (the test waits for it)
    TEST_MARK_FILE=PATH     also: when a signal stops training, PATH.stopped.rank<R> holds the step

    python distributed_cli.py train --recipe ...   (as `python -m cifarkit train --recipe ...`)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cifarkit.cli import main
from cifarkit.train import trainer as training


def _hooked_step(original):
    seconds = float(os.environ.get("TEST_STEP_SECONDS", "0"))
    mark_step = int(os.environ.get("TEST_MARK_STEP", "-1"))
    mark_file = os.environ.get("TEST_MARK_FILE", "")

    def step(self, x, y, epoch, batch):
        start = time.perf_counter()
        out = original(self, x, y, epoch, batch)
        if self.state.step + 1 == mark_step and mark_file:
            Path(f"{mark_file}.rank{self.world.rank}").touch()
        time.sleep(max(0.0, seconds - (time.perf_counter() - start)))
        return out
    return step


def _recorded_stop(original):
    mark_file = os.environ.get("TEST_MARK_FILE", "")

    def stop(self, signum):
        if mark_file:
            Path(f"{mark_file}.stopped.rank{self.world.rank}").write_text(str(self.state.step))
        return original(self, signum)
    return stop


if __name__ == "__main__":
    training.Trainer._step = _hooked_step(training.Trainer._step)
    training.Trainer._stop = _recorded_stop(training.Trainer._stop)
    sys.exit(main(sys.argv[1:]))
