"""Model selection during training: the weights of the epoch with the best validation accuracy
(`best.pt`), and the count of epochs since the last improvement that early stopping reads."""

from __future__ import annotations

import copy

from torch import nn

from cifarkit.rundir import RunDir
from cifarkit.train.callbacks.base import Callback
from cifarkit.train.callbacks.checkpoints import save_weights


class BestModel(Callback):
    """Tracks `val_acc` (the Validation callback must come first) in the training state; on an
    improvement saves `best.pt` and keeps a copy of the weights for evaluation in the same process."""

    def __init__(self, run: RunDir | None = None):
        self.run = run
        self.best_state: dict | None = None
        self._template: nn.Module | None = None

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        if "val_acc" not in record:
            return
        st = trainer.state
        if record["val_acc"] > st.best_val_acc:
            st.best_val_acc, st.best_epoch, st.bad_epochs = record["val_acc"], epoch + 1, 0
            save_weights(self.run, trainer, "best", trainer.model, epoch=epoch + 1, val_acc=record["val_acc"])
            self.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            self._template = trainer.model
        else:
            st.bad_epochs += 1

    def trained_models(self) -> dict[str, nn.Module]:
        """The best weights of this process's epochs (a run resumed after its best epoch has none
        here; evaluation then reads `best.pt`)."""
        if self.best_state is None:
            return {}
        best = copy.deepcopy(self._template)
        best.load_state_dict(self.best_state)
        return {"best": best.eval()}


class EarlyStopping(Callback):
    """Stops training after `patience` epochs without a validation improvement (BestModel counts them)."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_epoch_end(self, trainer, epoch: int, record: dict) -> None:
        st = trainer.state
        if "val_acc" in record and st.bad_epochs >= self.patience:
            st.stopped_early = True
            trainer.log(f"early stop after epoch {epoch + 1}: no validation improvement for "
                        f"{st.bad_epochs} epochs (best {st.best_val_acc:.4f} at epoch {st.best_epoch})")


__all__ = ["BestModel", "EarlyStopping"]
