"""SIGINT / SIGTERM as a flag the training loop checks after each step, and the error it raises
once the step is finished and (for a run with a directory) the checkpoint is written."""

from __future__ import annotations

import signal
import threading

from cifarkit.errors import CifarkitError


class Interrupted(CifarkitError):
    """SIGINT/SIGTERM arrived and the current step finished; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, detail: str = ""):
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} received" + (f": {detail}" if detail else ""))


class InterruptFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step; a second signal stops at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:          # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


__all__ = ["Interrupted", "InterruptFlag"]
