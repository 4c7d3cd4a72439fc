"""What a person watching a training run sees: a progress bar on a terminal (steps, images/s,
loss, the ETA of the whole run), plain lines elsewhere (a file, a pipe, CI), and one line per epoch.

Off a terminal a line is printed at the first step (which is slow: kernels are being chosen) and
then at least every `every_seconds`, so `cifarkit train ... | tee log` can be followed live.
"""

from __future__ import annotations

import sys
import time

from cifarkit.device import describe_precision
from cifarkit.train.callbacks.base import Callback


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress(Callback):
    def __init__(self, every_seconds: float = 30.0, terminal: bool | None = None):
        self.every_seconds = every_seconds
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.bar = None

    # -- the run ---------------------------------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        cfg, st = trainer.cfg, trainer.state
        self.total = cfg.epochs * trainer.steps_per_epoch
        self.start_step, self.start_time = st.step, time.perf_counter()
        self.last_print_time, self.last_print_step = self.start_time, st.step
        if st.epoch == 0 and st.batch == 0:
            trainer.log(f"training {trainer.recipe.name}: {cfg.epochs} epochs x {trainer.steps_per_epoch} steps, "
                        f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, "
                        f"{describe_precision(cfg.precision, trainer.device)} on {trainer.device}")
        if self.terminal:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=st.step, unit="step", dynamic_ncols=True, leave=False,
                            desc=self._epoch_label(trainer))
        elif st.step < self.total:
            trainer.log("the first steps are slow while kernels are chosen; a progress line follows at "
                        f"least every {self.every_seconds:.0f} s")

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if self.bar is not None:
            self.bar.set_description(self._epoch_label(trainer))

    def on_step_end(self, trainer, completed_steps: int) -> None:
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(completed_steps - self.bar.n)
            if now - self.last_print_time >= 0.5:          # reading the loss syncs a GPU: not every step
                self.bar.set_postfix(loss=f"{trainer.last_loss.item():.4f}",
                                     img_s=f"{self._images_per_second(trainer, completed_steps, now):.0f}")
                self.last_print_time, self.last_print_step = now, completed_steps
            return
        first = completed_steps == self.start_step + 1
        if first or now - self.last_print_time >= self.every_seconds:
            rate = self._images_per_second(trainer, completed_steps, now)
            seconds_per_step = (now - self.last_print_time) / max(completed_steps - self.last_print_step, 1)
            eta = format_duration(seconds_per_step * (self.total - completed_steps))
            trainer.log(f"epoch {trainer.state.epoch + 1}/{trainer.cfg.epochs} step {completed_steps}/{self.total}: "
                        f"loss {trainer.last_loss.item():.4f}, {rate:.0f} img/s, ETA {eta}"
                        + (" (first step: kernel selection)" if first else ""))
            self.last_print_time, self.last_print_step = now, completed_steps

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        self._print(trainer, epoch_line(record, trainer.cfg.epochs))

    def on_interrupt(self, trainer) -> None:
        self._close()

    def on_fit_end(self, trainer) -> None:
        self._close()

    # -- helpers ---------------------------------------------------------------------------------
    def _images_per_second(self, trainer, completed_steps: int, now: float) -> float:
        steps = completed_steps - self.last_print_step
        return steps * trainer.cfg.batch_size / max(now - self.last_print_time, 1e-9)

    @staticmethod
    def _epoch_label(trainer) -> str:
        return f"epoch {trainer.state.epoch + 1}/{trainer.cfg.epochs}"

    def _print(self, trainer, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            trainer.log(line)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_line(r: dict, epochs: int) -> str:
    """One line summing up an epoch's record."""
    parts = [f"epoch {r['epoch']}/{epochs}", f"loss {r['train_loss']:.4f}", f"acc {r['train_acc']:.4f}"]
    if "val_acc" in r:
        parts.append(f"val_loss {r['val_loss']:.4f} val_acc {r['val_acc']:.4f}")
    if "ema_val_acc" in r:
        parts.append(f"ema_val_acc {r['ema_val_acc']:.4f}")
    parts.append(f"lr {r['lr']:.4g}  {r['epoch_seconds']:.1f}s ({r['images_per_second']:.0f} img/s)")
    return "  ".join(parts)


__all__ = ["Progress", "epoch_line", "format_duration"]
