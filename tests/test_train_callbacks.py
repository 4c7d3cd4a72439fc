"""Each training callback on its own, driven by a stand-in trainer: what it adds to the epoch
record, what it changes in the training state, what it writes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.config import Recipe, TrainConfig
from cifarkit.rundir import RunDir
from cifarkit.train.callbacks import (BestModel, Checkpoints, EarlyStopping, EMACallback, LookaheadCallback,
                                      MetricsLog, Progress, SWACallback, TensorBoardLog, Validation)
from cifarkit.train.callbacks.progress import epoch_line, format_duration
from cifarkit.train.checkpoint import load_checkpoint
from cifarkit.train.state import TrainState


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def batches(n_batches: int = 3, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n_batches)]


class ListLoader(list):
    """A fixed list of (images, labels) batches with the loader's set_epoch."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def stand_in_trainer(model: nn.Module | None = None, **cfg) -> SimpleNamespace:
    model = model or small_net()
    lines: list[str] = []
    train_cfg = TrainConfig(**{"precision": "fp32", "epochs": 3, **cfg})
    return SimpleNamespace(model=model, cfg=train_cfg, state=TrainState(), recipe=Recipe(name="stand-in", train=train_cfg),
                           normalization={"mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["a", "b", "c"]},
                           device=torch.device("cpu"), log=lines.append, lines=lines, steps_per_epoch=4,
                           last_loss=torch.tensor(1.25), state_dict=lambda: {"state": {"epoch": 7}})


def nudge(model: nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


# -- validation ---------------------------------------------------------------------------------

def test_validation_adds_loss_and_accuracy_of_the_live_model_in_eval_mode():
    trainer = stand_in_trainer()
    loader = batches()
    record = {}
    trainer.model.train()
    Validation(loader).on_epoch_end(trainer, 0, record)
    trainer.model.eval()
    with torch.no_grad():
        logits = torch.cat([trainer.model(x) for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    assert record["val_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert record["val_acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert trainer.model.training is False            # set above; validation restores what it found


# -- weight averages ----------------------------------------------------------------------------

def test_ema_callback_updates_after_each_step_validates_and_saves(tmp_path):
    trainer = stand_in_trainer()
    run = RunDir(tmp_path / "run")
    callback = EMACallback(trainer.model, decay=0.5, val_loader=batches(), run=run)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    nudge(trainer.model, 1.0)
    callback.on_step_end(trainer, 1)
    for name, value in callback.ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * start[name] + 0.5 * trainer.model.state_dict()[name])
    record = {}
    callback.on_epoch_end(trainer, 0, record)
    assert set(record) == {"ema_val_loss", "ema_val_acc"}
    callback.on_fit_end(trainer)
    saved = load_checkpoint(run.weights("ema"))
    assert saved["kind"] == "ema" and saved["normalization"] == trainer.normalization
    assert all(torch.equal(saved["model"][k], v) for k, v in callback.ema.module.state_dict().items())
    assert callback.trained_models()["ema"] is callback.ema.module


def test_swa_callback_averages_from_its_start_epoch_and_recalibrates_bn(tmp_path):
    trainer = stand_in_trainer()
    loader = ListLoader(batches())
    callback = SWACallback(trainer.model, start_epoch=1, train_loader=loader, run=RunDir(tmp_path / "run"))
    snapshots = []
    for epoch in range(3):
        nudge(trainer.model, 0.1)
        snapshots.append([p.detach().clone() for p in trainer.model.parameters()])
        callback.on_epoch_end(trainer, epoch, {})
    assert callback.swa.n_averaged == 2                 # epochs 1 and 2, not 0
    for averaged, *seen in zip(callback.swa.module.parameters(), *snapshots[1:]):
        torch.testing.assert_close(averaged, torch.stack(seen).mean(0))
    callback.on_fit_end(trainer)
    assert loader.epoch == trainer.cfg.epochs          # recalibrated on a pass no epoch has seen
    bn = callback.swa.module[1]
    assert not torch.equal(bn.running_var, torch.ones(4))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "swa.pt")["n_averaged"] == 2


def test_swa_callback_without_snapshots_has_no_model():
    trainer = stand_in_trainer()
    callback = SWACallback(trainer.model, start_epoch=5, train_loader=ListLoader(batches()))
    callback.on_epoch_end(trainer, 0, {})
    callback.on_fit_end(trainer)
    assert callback.trained_models() == {}


def test_lookahead_callback_pulls_back_every_k_steps_and_finishes_on_the_slow_weights():
    trainer = stand_in_trainer()
    callback = LookaheadCallback(trainer.model, every=2, total_steps=4)
    slow = [p.detach().clone() for p in trainer.model.parameters()]
    nudge(trainer.model, 1.0)
    callback.on_step_end(trainer, 1)                    # not a multiple of 2: nothing happens
    assert not torch.equal(next(trainer.model.parameters()), slow[0])
    callback.on_step_end(trainer, 2)                    # decay 0.95**2 * (2/4)**3
    decay = 0.95 ** 2 * 0.5 ** 3
    for p, s in zip(trainer.model.parameters(), slow):
        torch.testing.assert_close(p, decay * s + (1 - decay) * (s + 1.0))
    nudge(trainer.model, 1.0)
    callback.on_fit_end(trainer)
    live = [t for t in trainer.model.state_dict().values() if t.is_floating_point()]
    assert all(torch.equal(t, s) for t, s in zip(live, callback.lookahead.slow))
    assert torch.equal(next(trainer.model.parameters()), callback.lookahead.slow[0])


# -- selection and early stopping -----------------------------------------------------------------

def test_best_model_and_early_stopping_follow_validation_accuracy(tmp_path):
    trainer = stand_in_trainer()
    run = RunDir(tmp_path / "run")
    best, stop = BestModel(run), EarlyStopping(patience=2)
    saved_at = []
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.7, 0.65]):
        nudge(trainer.model, 0.1)
        record = {"val_acc": acc}
        best.on_epoch_end(trainer, epoch, record)
        stop.on_epoch_end(trainer, epoch, record)
        if run.weights("best").exists():
            saved_at.append(load_checkpoint(run.weights("best"))["epoch"])
        if trainer.state.stopped_early:
            break
    st = trainer.state
    assert (st.best_val_acc, st.best_epoch) == (0.7, 2)   # a tie does not count as an improvement
    assert st.stopped_early and epoch == 3 and st.bad_epochs == 2
    assert saved_at == [1, 2, 2, 2]
    assert trainer.lines == ["early stop after epoch 4: no validation improvement for 2 epochs "
                             "(best 0.7000 at epoch 2)"]
    kept = best.trained_models()["best"]
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(),
                                                 load_checkpoint(run.weights("best"))["model"].values()))


def test_best_model_ignores_epochs_without_validation():
    trainer = stand_in_trainer()
    callback = BestModel()
    callback.on_epoch_end(trainer, 0, {"train_acc": 0.9})
    assert trainer.state.best_epoch == -1 and callback.trained_models() == {}


# -- files ----------------------------------------------------------------------------------------

def test_metrics_log_appends_and_drops_lines_a_checkpoint_does_not_cover(tmp_path):
    run = RunDir(tmp_path)
    trainer = stand_in_trainer()
    log = MetricsLog(run)
    log.on_fit_start(trainer)
    assert not run.metrics.exists()                      # a fresh run has nothing to truncate
    for epoch in range(3):
        log.on_epoch_end(trainer, epoch, {"epoch": epoch + 1, "train_loss": 1.0 / (epoch + 1)})
    trainer.state.epoch = 1                              # the checkpoint a resume starts from
    log.on_fit_start(trainer)
    assert [json.loads(line)["epoch"] for line in run.metrics.read_text().splitlines()] == [1]


def test_tensorboard_events_are_written_and_readable(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = RunDir(tmp_path)
    trainer = stand_in_trainer()
    board = TensorBoardLog(run)
    board.on_fit_start(trainer)
    for epoch in range(2):
        board.on_epoch_end(trainer, epoch, {"epoch": epoch + 1, "train_loss": 2.0 - epoch, "val_acc": 0.5 + epoch / 10,
                                            "stopped": True})
    board.on_fit_end(trainer)
    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train_loss", "val_acc"}
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(1, 2.0), (2, 1.0)]
    assert [round(e.value, 6) for e in events.Scalars("val_acc")] == [0.5, 0.6]


def test_checkpoints_write_last_every_epoch_and_on_interrupt_and_final_at_the_end(tmp_path):
    run = RunDir(tmp_path)
    trainer = stand_in_trainer()
    callback = Checkpoints(run)
    assert callback.last_good(trainer) == "none (no epoch finished yet)"
    callback.on_epoch_end(trainer, 0, {})
    assert load_checkpoint(run.last)["state"] == {"epoch": 7}
    run.last.unlink()
    callback.on_interrupt(trainer)
    assert run.last.exists()
    trainer.state.epoch = 3
    assert callback.last_good(trainer) == f"{run.last} (after epoch 3)"
    callback.on_fit_end(trainer)
    final = load_checkpoint(run.weights("final"))
    assert final["kind"] == "final" and final["epoch"] == 3 and final["recipe"]["name"] == "stand-in"
    assert "resume with: cifarkit train --resume" in callback.resume_hint()


# -- progress -------------------------------------------------------------------------------------

def test_progress_off_a_terminal_prints_the_first_step_then_at_an_interval():
    trainer = stand_in_trainer(epochs=2, batch_size=16)
    progress = Progress(every_seconds=0.0, terminal=False)
    progress.on_fit_start(trainer)
    for step in (1, 2):
        progress.on_step_end(trainer, step)
    progress.on_epoch_end(trainer, 0, {"epoch": 1, "train_loss": 1.5, "train_acc": 0.25, "lr": 0.1,
                                       "epoch_seconds": 2.0, "images_per_second": 32.0, "val_loss": 1.0,
                                       "val_acc": 0.5})
    lines = trainer.lines
    assert lines[0].startswith("training stand-in: 2 epochs x 4 steps, batch 16")
    assert "kernels are chosen" in lines[1]
    assert lines[2].startswith("epoch 1/2 step 1/8: loss 1.2500,") and "(first step: kernel selection)" in lines[2]
    assert lines[3].startswith("epoch 1/2 step 2/8: loss 1.2500,") and "ETA" in lines[3]
    assert lines[4] == "epoch 1/2  loss 1.5000  acc 0.2500  val_loss 1.0000 val_acc 0.5000  lr 0.1  2.0s (32 img/s)"


def test_progress_waits_for_its_interval_off_a_terminal():
    trainer = stand_in_trainer()
    progress = Progress(every_seconds=3600, terminal=False)
    progress.on_fit_start(trainer)
    for step in range(1, 5):
        progress.on_step_end(trainer, step)
    assert sum("step " in line for line in trainer.lines) == 1     # only the first step


def test_progress_on_a_terminal_drives_a_bar(capsys):
    trainer = stand_in_trainer(epochs=1)
    progress = Progress(terminal=True)
    progress.on_fit_start(trainer)
    for step in range(1, 5):
        progress.on_step_end(trainer, step)
    assert progress.bar.n == 4 and progress.bar.total == 4
    progress.on_fit_end(trainer)
    assert progress.bar is None


def test_duration_and_epoch_line_formats():
    assert [format_duration(s) for s in (0, 59.4, 61, 3725)] == ["0:00", "0:59", "1:01", "1:02:05"]
    line = epoch_line({"epoch": 3, "train_loss": 0.5, "train_acc": 0.9, "lr": 0.01, "epoch_seconds": 1.25,
                       "images_per_second": 1000.0, "ema_val_acc": 0.8, "val_loss": 0.4, "val_acc": 0.85}, 10)
    assert line.startswith("epoch 3/10  loss 0.5000  acc 0.9000  val_loss 0.4000 val_acc 0.8500  ema_val_acc 0.8000")


@pytest.mark.parametrize("keep, ema_accs, live_accs, kept_epoch", [
    ("best", [0.3, 0.6, 0.5], [0.9, 0.1, 0.1], 2),      # the EMA's own best epoch (reference 004)
    ("at_best", [0.3, 0.6, 0.5], [0.4, 0.2, 0.7], 3),   # the live model's best epoch (reference 000)
])
def test_ema_keep_saves_the_average_of_the_deciding_epoch(tmp_path, monkeypatch, keep, ema_accs, live_accs, kept_epoch):
    import cifarkit.train.callbacks.ema as ema_module
    scripted = iter(ema_accs)
    monkeypatch.setattr(ema_module, "validate", lambda model, loader, precision, world=None: (1.0, next(scripted)))
    trainer = stand_in_trainer()
    run = RunDir(tmp_path / "run")
    callback = EMACallback(trainer.model, decay=0.5, val_loader=batches(), run=run, keep=keep)
    best = BestModel()
    kept = {}
    for epoch, live in enumerate(live_accs):
        nudge(trainer.model, 1.0)
        callback.on_step_end(trainer, epoch + 1)
        record = {"val_acc": live}
        callback.on_epoch_end(trainer, epoch, record)        # before BestModel, as build_callbacks orders them
        best.on_epoch_end(trainer, epoch, record)
        kept[epoch + 1] = {k: v.clone() for k, v in callback.ema.module.state_dict().items()}
    callback.on_fit_end(trainer)
    saved = load_checkpoint(run.weights("ema"))
    assert saved["epoch"] == kept_epoch and saved["keep"] == keep
    assert all(torch.equal(saved["model"][k], v) for k, v in kept[kept_epoch].items())
    in_memory = callback.trained_models()["ema"].state_dict()
    assert all(torch.equal(in_memory[k], v) for k, v in kept[kept_epoch].items())
    restored = EMACallback(trainer.model, decay=0.5, val_loader=batches(), keep=keep)
    restored.load_state_dict(callback.state_dict())
    assert restored.kept_val_acc == callback.kept_val_acc > 0 and restored.trained_models() == {}


def test_ema_keep_last_saves_the_final_average(tmp_path):
    trainer = stand_in_trainer()
    run = RunDir(tmp_path / "run")
    callback = EMACallback(trainer.model, decay=0.5, run=run)
    nudge(trainer.model, 1.0)
    callback.on_step_end(trainer, 1)
    callback.on_fit_end(trainer)
    saved = load_checkpoint(run.weights("ema"))
    assert saved["keep"] == "last"
    assert all(torch.equal(saved["model"][k], v) for k, v in callback.ema.module.state_dict().items())
    with pytest.raises(ValueError, match="validation loader"):
        EMACallback(trainer.model, decay=0.5, keep="best")
