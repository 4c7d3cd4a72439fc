"""The training loop: steps, epochs, validation, weight averaging, checkpoints, interrupts.

Everything random is derived from (seed, epoch, batch), so a run resumed from any checkpoint
replays exactly what the uninterrupted run would have done (bit for bit on CPU).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from cifarkit.augment.pipeline import build_mixer
from cifarkit.config import Recipe, recipe_to_dict
from cifarkit.errors import CifarkitError, ConfigError
from cifarkit.fsio import append_jsonl
from cifarkit.models.fastnet import param_groups as fastnet_param_groups
from cifarkit.rundir import RunDir
from cifarkit.seeding import derive_seed, make_generator
from cifarkit.train.averaging import EMA, SWA, Lookahead
from cifarkit.train.checkpoint import load_weights, save_checkpoint
from cifarkit.train.losses import build_loss
from cifarkit.train.optim import LRSchedule, build_optimizer, swa_start_epoch


class Interrupted(CifarkitError):
    """SIGINT/SIGTERM arrived; the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, run_dir):
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: checkpoint written; resume with: cifarkit train --resume {run_dir}")


class NonFiniteError(CifarkitError):
    """The loss or the gradients became NaN or infinite."""


@dataclass
class TrainState:
    epoch: int = 0                # completed epochs
    batch: int = 0                # completed batches of the current epoch (non-zero only after an interrupt)
    step: int = 0                 # completed optimizer steps
    best_val_acc: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0           # epochs since the last validation improvement
    stopped_early: bool = False
    lr_factor: float = 1.0        # lowered after skipped non-finite steps (on_nonfinite: skip)
    skipped_steps: int = 0
    train_seconds: float = 0.0
    partial: dict = field(default_factory=dict)   # running sums of an interrupted epoch


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("'train.precision: fp16' needs a CUDA GPU; use bf16 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class InterruptFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

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


@torch.no_grad()
def validate(model: nn.Module, loader, device, precision: str) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on an un-augmented loader."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for x, y in loader:
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        count += y.numel()
    model.train(was_training)
    return loss_sum.item() / max(count, 1), correct.item() / max(count, 1)


class Trainer:
    def __init__(self, recipe: Recipe, model: nn.Module, train_loader, val_loader, run: RunDir,
                 device: torch.device, log: Callable[[str], None] = print, num_classes: int = 10,
                 normalization: dict | None = None, persist: bool = True):
        self.recipe, self.cfg = recipe, recipe.train
        self.persist = persist          # benchmarks time training alone: no checkpoints, no files
        self.model, self.device, self.log = model, device, log
        self.train_loader, self.val_loader = train_loader, val_loader
        self.run = run
        self.normalization = normalization or {}
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"'train.batch_size' {self.cfg.batch_size} is larger than the training split")
        self.optimizer = build_optimizer(model, self.cfg, _param_groups(model, recipe, self.steps_per_epoch))
        self.schedule = LRSchedule(self.cfg, self.steps_per_epoch)
        self.lookahead = (Lookahead(model, self.cfg.lookahead_every, self.schedule.total_steps)
                          if self.cfg.lookahead_every else None)
        self.loss_fn = build_loss(self.cfg)
        self.mixer = build_mixer(recipe.augment, num_classes)
        self.scaler = torch.amp.GradScaler("cuda") if self.cfg.precision == "fp16" else None
        self.ema = EMA(model, self.cfg.ema_decay) if self.cfg.ema_decay > 0 else None
        self.swa_from = swa_start_epoch(self.cfg)
        self.swa = SWA(model) if self.swa_from is not None else None
        self.forward = torch.compile(model) if self.cfg.compile else model
        # A sync per step costs GPU throughput; on the CPU it is free.
        self.check_every = 1 if (device.type == "cpu" or self.cfg.on_nonfinite == "skip") else 25
        self.state = TrainState()
        self.tb = None              # opened when training starts, so a failed start leaves no files

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "recipe": recipe_to_dict(self.recipe),
            "state": asdict(self.state),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "swa": self.swa.state_dict() if self.swa else None,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "normalization": self.normalization,
        }

    def load_state_dict(self, ckpt: dict) -> None:
        load_weights(self.model, ckpt["model"], str(self.run.last))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        if self.swa and ckpt.get("swa"):
            self.swa.load_state_dict(ckpt["swa"])
        if self.lookahead and ckpt.get("lookahead"):
            self.lookahead.load_state_dict(ckpt["lookahead"])
        self.state = TrainState(**ckpt["state"])

    def save_last(self) -> None:
        if self.persist:
            save_checkpoint(self.run.last, self.state_dict())

    def save_weights(self, kind: str, module: nn.Module, **meta) -> None:
        if self.persist:
            save_checkpoint(self.run.weights(kind), {"kind": kind, "model": module.state_dict(),
                                                     "recipe": recipe_to_dict(self.recipe),
                                                     "normalization": self.normalization, **meta})

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, st = self.cfg, self.state
        if self.persist:
            self.tb = _tensorboard_writer(self.run)
        if st.epoch == 0 and st.batch == 0:
            self.log(f"training {self.recipe.name}: {cfg.epochs} epochs x {self.steps_per_epoch} steps, "
                     f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, {cfg.precision} on {self.device}")
        with InterruptFlag() as interrupt:
            while st.epoch < cfg.epochs and not st.stopped_early:
                self._run_epoch(interrupt)
        return self._finish()

    def _run_epoch(self, interrupt: InterruptFlag) -> None:
        cfg, st = self.cfg, self.state
        epoch = st.epoch
        if hasattr(self.model, "set_epoch"):      # per-epoch behaviour of the net itself (e.g. frozen stems)
            self.model.set_epoch(epoch)
        self.model.train()
        sums = {"loss": 0.0, "correct": 0, "count": 0, "seconds": 0.0, **st.partial}
        loss_sum = torch.tensor(sums["loss"], dtype=torch.float64, device=self.device)
        correct = torch.tensor(sums["correct"], dtype=torch.int64, device=self.device)
        count = sums["count"]
        start = time.perf_counter()
        self.train_loader.set_epoch(epoch)
        batches = self.train_loader.iter_from(st.batch)
        for b, (x, y) in enumerate(_progress(batches, self.steps_per_epoch, st.batch, epoch, cfg.epochs),
                                   start=st.batch):
            loss, hits = self._step(x, y, epoch, b)
            loss_sum += loss.double() * y.numel()
            correct += hits
            count += y.numel()
            st.batch, st.step = b + 1, st.step + 1
            if interrupt.signum is not None:
                st.partial = {"loss": loss_sum.item(), "correct": correct.item(), "count": count,
                              "seconds": sums["seconds"] + time.perf_counter() - start}
                st.train_seconds += time.perf_counter() - start
                self.save_last()
                raise Interrupted(interrupt.signum, self.run.root)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = sums["seconds"] + time.perf_counter() - start
        st.train_seconds += time.perf_counter() - start
        st.epoch, st.batch, st.partial = epoch + 1, 0, {}
        record = {"epoch": epoch + 1, "step": st.step, "lr": self.schedule.lr_at(st.step - 1) * st.lr_factor,
                  "train_loss": loss_sum.item() / max(count, 1), "train_acc": correct.item() / max(count, 1),
                  "epoch_seconds": round(seconds, 3), "images_per_second": round(count / max(seconds, 1e-9), 1)}
        if self.swa is not None and epoch >= self.swa_from:
            self.swa.update(self.model)
        record.update(self._end_of_epoch_validation(epoch))
        if self.persist:
            append_jsonl(self.run.metrics, record)
        self._log_epoch(record)
        self.save_last()
        if interrupt.signum is not None:           # arrived during validation or the checkpoint write
            raise Interrupted(interrupt.signum, self.run.root)

    def _step(self, x, y, epoch: int, batch: int):
        cfg, st = self.cfg, self.state
        step = st.step
        lr = self.schedule.apply(self.optimizer, step)
        if st.lr_factor != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= st.lr_factor
        torch.manual_seed(derive_seed(self.recipe.seed, "step", step))   # dropout and other global draws
        if cfg.on_nonfinite == "skip":   # a skipped step must not leave NaN in the BN running statistics
            buffers = [b for b in self.model.buffers() if b.is_floating_point()]
            saved_buffers = [b.clone() for b in buffers]
        targets = y
        if self.mixer is not None:
            progress = step / self.schedule.total_steps
            if self.mixer.active(progress):
                generator = make_generator(self.recipe.seed, self.device, "mix", epoch, batch)
                x, targets = self.mixer(x, y, progress, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss, hits = self._forward_backward(x, targets)
        grad_norm = None
        if cfg.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if step % self.check_every == 0 and not self._finite(loss, grad_norm):
            if cfg.on_nonfinite == "stop":
                last = (f"{self.run.last} (after epoch {st.epoch})" if self.run.last.exists()
                        else "none (no epoch finished yet)")
                raise NonFiniteError(f"non-finite loss or gradients at step {step} (epoch {epoch + 1}, "
                                     f"lr {lr * st.lr_factor:.4g}); last good checkpoint: {last}; lower "
                                     "train.lr, enable train.grad_clip, or set train.on_nonfinite=skip")
            self.optimizer.zero_grad(set_to_none=True)
            torch._foreach_copy_(buffers, saved_buffers)
            st.skipped_steps += 1
            st.lr_factor *= 0.5
            self.log(f"step {step}: non-finite loss, step skipped, learning rate now x{st.lr_factor:g}")
            return torch.zeros((), device=self.device), torch.zeros((), dtype=torch.int64, device=self.device)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if self.lookahead is not None:
            self.lookahead.step(self.model, step + 1)
        return loss, hits

    def _forward_backward(self, x, targets):
        """Gradients of the batch-mean loss, accumulated over micro-batches of `train.micro_batch`
        images (smaller pieces run faster on CPUs; BN then normalizes each piece on its own).
        Returns the batch loss and the number of correct predictions, both detached."""
        size = self.cfg.micro_batch or len(x)
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), dtype=torch.int64, device=self.device)
        for xs, ts in zip(x.split(size), targets.split(size)):
            with autocast(self.device, self.cfg.precision):
                logits = self.forward(xs)
            loss = self.loss_fn(logits.float(), ts) * (len(xs) / len(x))
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            loss_sum += loss.detach()
            hard = ts if ts.ndim == 1 else ts.argmax(1)
            hits += (logits.detach().argmax(1) == hard).sum()
        return loss_sum, hits

    def _finite(self, loss, grad_norm) -> bool:
        ok = torch.isfinite(loss)
        if grad_norm is not None and self.scaler is None:
            ok = ok & torch.isfinite(grad_norm)
        return bool(ok)

    def _end_of_epoch_validation(self, epoch: int) -> dict:
        st, cfg = self.state, self.cfg
        if self.val_loader is None:
            return {}
        val_loss, val_acc = validate(self.model, self.val_loader, self.device, cfg.precision)
        out = {"val_loss": val_loss, "val_acc": val_acc}
        if self.ema is not None:
            out["ema_val_loss"], out["ema_val_acc"] = validate(self.ema.module, self.val_loader, self.device,
                                                               cfg.precision)
        if val_acc > st.best_val_acc:
            st.best_val_acc, st.best_epoch, st.bad_epochs = val_acc, epoch + 1, 0
            self.save_weights("best", self.model, epoch=epoch + 1, val_acc=val_acc)
        else:
            st.bad_epochs += 1
            if cfg.early_stopping_patience and st.bad_epochs >= cfg.early_stopping_patience:
                st.stopped_early = True
                self.log(f"early stop after epoch {epoch + 1}: no validation improvement for "
                         f"{st.bad_epochs} epochs (best {st.best_val_acc:.4f} at epoch {st.best_epoch})")
        return out

    def _log_epoch(self, r: dict) -> None:
        parts = [f"epoch {r['epoch']}/{self.cfg.epochs}", f"loss {r['train_loss']:.4f}",
                 f"acc {r['train_acc']:.4f}"]
        if "val_acc" in r:
            parts.append(f"val_loss {r['val_loss']:.4f} val_acc {r['val_acc']:.4f}")
        if "ema_val_acc" in r:
            parts.append(f"ema_val_acc {r['ema_val_acc']:.4f}")
        parts.append(f"lr {r['lr']:.4g}  {r['epoch_seconds']:.1f}s ({r['images_per_second']:.0f} img/s)")
        self.log("  ".join(parts))
        if self.tb is not None:
            for key, value in r.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, r["epoch"])
            self.tb.flush()

    def _finish(self) -> dict:
        st = self.state
        if self.lookahead is not None:
            self.lookahead.finish(self.model)
        if self.swa is not None and self.swa.n_averaged > 0:
            self.train_loader.set_epoch(self.cfg.epochs)
            images = (x for x, _ in self.train_loader)
            self.swa.recalibrate_bn(images, self.device)
            self.save_weights("swa", self.swa.module, epoch=st.epoch, n_averaged=self.swa.n_averaged)
        self.save_weights("final", self.model, epoch=st.epoch)
        if self.ema is not None:
            self.save_weights("ema", self.ema.module, epoch=st.epoch)
        if self.tb is not None:
            self.tb.close()
        return {"epochs_run": st.epoch, "steps": st.step, "stopped_early": st.stopped_early,
                "best_val_acc": st.best_val_acc if st.best_epoch > 0 else None,
                "best_epoch": st.best_epoch if st.best_epoch > 0 else None,
                "skipped_steps": st.skipped_steps, "train_seconds": round(st.train_seconds, 3)}


def _param_groups(model: nn.Module, recipe: Recipe, steps_per_epoch: int) -> dict | None:
    """BatchNorm biases at `bias_lr_scale` x the learning rate, with weight decay divided by the same
    factor so the per-step decay lr x wd is unchanged (the speed-run convention). The FastNet
    whitening bias likewise with `whiten_bias_lr_scale`; with `whiten_bias_decay` its rate leaves
    the schedule and falls linearly to 0 at the step the bias freezes (airbench94_muon)."""
    cfg = recipe.train

    def scaled(params: list, scale: float) -> dict:
        return {"params": params, "lr_scale": scale, "weight_decay": cfg.weight_decay / scale}

    groups = {}
    if cfg.whiten_bias_lr_scale is not None or cfg.whiten_bias_decay:
        groups["whiten_bias"] = scaled(fastnet_param_groups(model)["whiten_bias"], cfg.whiten_bias_lr_scale or 1.0)
        if cfg.whiten_bias_decay:
            groups["whiten_bias"]["linear_to_zero_steps"] = recipe.model.whiten_bias_epochs * steps_per_epoch
    if cfg.bias_lr_scale != 1.0:
        biases = [m.bias for m in model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None and m.bias.requires_grad]
        groups["norm_biases"] = scaled(biases, cfg.bias_lr_scale)
    return groups or None


def _progress(iterable, total: int, done: int, epoch: int, epochs: int):
    """A progress bar on a terminal, plain iteration otherwise (CI, files, notebooks)."""
    if not sys.stdout.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                dynamic_ncols=True)


def _tensorboard_writer(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    try:
        return SummaryWriter(log_dir=str(run.tensorboard))
    except Exception:  # noqa: BLE001 - TensorBoard is optional; never let it stop a run
        return None

