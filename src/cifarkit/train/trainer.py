"""The training loop: steps and epochs. Everything around it is a callback (`train.callbacks`).

Everything random is derived from (seed, epoch, batch), so a run resumed from any checkpoint
replays exactly what the uninterrupted run would have done (bit for bit on CPU).

With several processes (torchrun) each rank runs this same loop on the same global batches; how
a rank takes its part of a step is `train.parallel.ParallelStep`, and the few numbers the ranks
must agree on (the batch loss and hits, a stop signal) pass through `train.distributed.World`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch
from torch import nn

from cifarkit.augment.pipeline import build_mixer
from cifarkit.config import Recipe, recipe_to_dict
from cifarkit.device import autocast, synchronize
from cifarkit.errors import ConfigError
from cifarkit.models.trainable import TrainableModel
from cifarkit.seeding import derive_seed, make_generator
from cifarkit.train.callbacks import Callback, Checkpoints
from cifarkit.train.checkpoint import load_weights
from cifarkit.train.distributed import World
from cifarkit.train.interrupt import InterruptFlag, Interrupted
from cifarkit.train.losses import build_loss
from cifarkit.train.nonfinite import NonFiniteError, NonFiniteGuard
from cifarkit.train.optim import LRSchedule, build_optimizer
from cifarkit.train.parallel import ParallelStep
from cifarkit.train.state import TrainState


class Trainer:
    def __init__(self, recipe: Recipe, model: TrainableModel, train_loader, *, device: torch.device,
                 num_classes: int = 10, normalization: dict | None = None,
                 log: Callable[[str], None] = print, world: World | None = None):
        self.recipe, self.cfg = recipe, recipe.train
        self.model, self.device, self.log = model, device, log
        self.world = world or World(device=device)
        self.train_loader = train_loader
        self.normalization = normalization or {}
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"'train.batch_size' {self.cfg.batch_size} is larger than the training split")
        self.parallel = ParallelStep(model, self.cfg, self.world, log=log)
        self.optimizer = build_optimizer(model, self.cfg, model.param_groups(self.cfg, self.steps_per_epoch))
        self.schedule = LRSchedule(self.cfg, self.steps_per_epoch)
        self.loss_fn = build_loss(self.cfg)
        self.mixer = build_mixer(recipe.augment, num_classes)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.cfg.precision == "fp16")
        self.guard = NonFiniteGuard(self.cfg.on_nonfinite, device, scaled=self.scaler.is_enabled())
        self.callbacks: list[Callback] = []
        self.state = TrainState()
        self.last_loss = torch.zeros((), device=device)

    @property
    def forward(self):
        """The model as the step calls it (compiled, and wrapped in DDP when distributed)."""
        return self.parallel.forward_module()

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        stateful = {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key}
        return {
            "recipe": recipe_to_dict(self.recipe),
            "state": asdict(self.state),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            **{key: stateful.get(key) for key in ("ema", "swa", "lookahead")},
            **stateful,
            "normalization": self.normalization,
        }

    def load_state_dict(self, ckpt: dict, source: str) -> None:
        load_weights(self.model, ckpt["model"], source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        for cb in self.callbacks:
            if cb.state_key and ckpt.get(cb.state_key):
                cb.load_state_dict(ckpt[cb.state_key])
        self.state = TrainState(**ckpt["state"])

    def trained_models(self) -> dict[str, nn.Module]:
        """Every model this run produced, by weights kind: the live one as "final", plus the
        callbacks' (best, EMA, SWA); evaluation in the same process reuses them."""
        models = {"final": self.model}
        for cb in self.callbacks:
            models.update(cb.trained_models())
        return models

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        st = self.state
        self._call("on_fit_start")
        with InterruptFlag() as interrupt:
            while st.epoch < self.cfg.epochs and not st.stopped_early:
                self._run_epoch(interrupt)
        self._call("on_fit_end")
        return {"epochs_run": st.epoch, "steps": st.step, "stopped_early": st.stopped_early,
                "best_val_acc": st.best_val_acc if st.best_epoch > 0 else None,
                "best_epoch": st.best_epoch if st.best_epoch > 0 else None,
                "skipped_steps": st.skipped_steps, "train_seconds": round(st.train_seconds, 3)}

    def _run_epoch(self, interrupt: InterruptFlag) -> None:
        st = self.state
        epoch = st.epoch
        self.model.set_epoch(epoch)
        self.model.train()
        self._call("on_epoch_start", epoch)
        sums = {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0, **st.partial}
        loss_sum = torch.tensor(sums["loss"], dtype=torch.float64, device=self.device)
        correct = torch.tensor(sums["correct"], dtype=torch.int64, device=self.device)
        count = sums["count"]
        start = time.perf_counter()
        self.train_loader.set_epoch(epoch)
        for b, (x, y) in enumerate(self.train_loader.iter_from(st.batch), start=st.batch):
            loss, hits = self._step(x, y, epoch, b)
            loss_sum += loss.double() * y.numel()
            correct += hits
            count += y.numel()
            st.batch, st.step = b + 1, st.step + 1
            signum = self.world.agreed_signal(interrupt.signum)
            if signum is not None:
                st.partial = {"loss": loss_sum.item(), "correct": correct.item(), "count": count,
                              "seconds": sums["seconds"] + time.perf_counter() - start}
                st.train_seconds += time.perf_counter() - start
                self._stop(signum)
        synchronize(self.device)
        seconds = sums["seconds"] + time.perf_counter() - start
        st.train_seconds += time.perf_counter() - start
        st.epoch, st.batch, st.partial = epoch + 1, 0, {}
        record = {"epoch": epoch + 1, "step": st.step, "lr": self.schedule.lr_at(st.step - 1) * st.lr_factor,
                  "train_loss": loss_sum.item() / max(count, 1), "train_acc": correct.item() / max(count, 1),
                  "epoch_seconds": round(seconds, 3), "images_per_second": round(count / max(seconds, 1e-9), 1)}
        self._call("on_epoch_end", epoch, record)
        signum = self.world.agreed_signal(interrupt.signum)
        if signum is not None:           # arrived during validation or the checkpoint write
            self._stop(signum)

    def _step(self, x, y, epoch: int, batch: int):
        st = self.state
        step = st.step
        lr = self._set_learning_rate(step)
        # dropout and other global draws; each rank draws its own rows' (not the single process's masks)
        torch.manual_seed(derive_seed(self.recipe.seed, "step", step, *self.world.stream_key))
        snapshot = self.guard.snapshot(self.model)
        x, targets = self._mix(x, y, step, epoch, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.parallel.before_step()
        loss, hits = self.world.sum(*self._forward_backward(x, targets))     # the global batch's, on every rank
        grad_norm = self._clip_gradients()
        if not self.guard.finite(step, loss, grad_norm):
            return self._non_finite(step, epoch, lr, snapshot)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.parallel.after_step()
        self.last_loss = loss
        self._call("on_step_end", step + 1)
        return loss, hits

    def _set_learning_rate(self, step: int) -> float:
        lr = self.schedule.apply(self.optimizer, step)
        if self.state.lr_factor != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.state.lr_factor
        return lr

    def _mix(self, x, y, step: int, epoch: int, batch: int):
        """MixUp / CutMix of the whole batch when the recipe asks for it (soft targets then)."""
        if self.mixer is None:
            return x, y
        progress = step / self.schedule.total_steps
        if not self.mixer.active(progress):
            return x, y
        generator = make_generator(self.recipe.seed, self.device, "mix", epoch, batch)
        return self.mixer(x, y, progress, generator)

    def _forward_backward(self, x, targets):
        """Gradients of the batch-mean loss, accumulated over micro-batches of `train.micro_batch`
        images (smaller pieces run faster on CPUs; BN then normalizes each piece on its own).
        With several processes this rank computes only its pieces of the batch (`ParallelStep`).
        Returns this rank's part of the batch loss and its correct predictions, both detached."""
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.int64, device=self.device)
        for xs, ts, gradient_sync, weight in self.parallel.pieces(x, targets):
            with gradient_sync:
                with autocast(self.device, self.cfg.precision):
                    logits = self.forward(xs)
                loss = self.loss_fn(logits.float(), ts) * weight
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
            hard = ts if ts.ndim == 1 else ts.argmax(1)
            hits += (logits.detach().argmax(1) == hard).sum()
        return loss_sum / self.parallel.size, hits

    def _clip_gradients(self):
        if self.cfg.grad_clip <= 0:
            return None
        self.scaler.unscale_(self.optimizer)
        return nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)

    def _non_finite(self, step: int, epoch: int, lr: float, snapshot):
        st = self.state
        if self.cfg.on_nonfinite == "stop":
            checkpoints = self._checkpoints()
            last = checkpoints.last_good(self) if checkpoints else "none (this run keeps no checkpoints)"
            raise NonFiniteError(f"non-finite loss or gradients at step {step} (epoch {epoch + 1}, "
                                 f"lr {lr * st.lr_factor:.4g}); last good checkpoint: {last}; lower "
                                 "train.lr, enable train.grad_clip, or set train.on_nonfinite=skip")
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.restore(snapshot)
        if self.scaler.is_enabled():     # close the scaler's step (unscale_ may have run) at a lower scale
            self.scaler.update(self.scaler.get_scale() * 0.5)
        st.skipped_steps += 1
        st.lr_factor *= 0.5
        self.log(f"step {step}: non-finite loss, step skipped, learning rate now x{st.lr_factor:g}")
        return torch.zeros((), device=self.device), torch.zeros((), dtype=torch.int64, device=self.device)

    # -- callbacks and stopping ----------------------------------------------------------------
    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _checkpoints(self) -> Checkpoints | None:
        return next((cb for cb in self.callbacks if isinstance(cb, Checkpoints)), None)

    def _stop(self, signum: int) -> None:
        """A signal arrived: let the callbacks save what they must, then stop with its exit code."""
        self._call("on_interrupt")
        checkpoints = self._checkpoints()
        raise Interrupted(signum, checkpoints.resume_hint() if checkpoints else "")


__all__ = ["Trainer", "Interrupted", "NonFiniteError"]
