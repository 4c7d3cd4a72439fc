"""One training process of the distributed tests: run as a plain process (a world of one) or as a
rank under torchrun. Trains a recipe without a run directory and writes, per rank, what the tests
compare: a digest of every weight and buffer after each step, the gradient exchanges of each
step, the final state, and the validation numbers of the final model scored by this rank alone
and by all ranks together.

    python distributed_worker.py OUT_DIR DATA_DIR RECIPE [KEY=VALUE ...]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from cifarkit.config import load_recipe
from cifarkit.experiment import Experiment
from cifarkit.train.callbacks import Callback
from cifarkit.train.callbacks.validation import validate
from cifarkit.train.distributed import join


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Record(Callback):
    """Every step: the digest of the live weights and buffers (the state every rank must share),
    and how many gradient buckets DDP exchanged during it (counted by a comm hook)."""

    def __init__(self):
        self.digests: list[str] = []
        self.exchanges: list[int] = []
        self.calls = 0

    def count(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        self.calls += 1
        return allreduce_hook(state, bucket)

    def on_step_end(self, trainer, completed_steps: int) -> None:
        self.digests.append(digest(trainer.model))
        self.exchanges.append(self.calls)
        self.calls = 0


def count_exchanges(record: Record) -> None:
    """Every DDP wrapper the trainer builds, whenever it builds it, reports its exchanges to `record`."""
    from torch.nn.parallel import DistributedDataParallel
    build = DistributedDataParallel.__init__

    def counted(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self.register_comm_hook(None, record.count)
    DistributedDataParallel.__init__ = counted


def main(out: str, data_dir: str, recipe_name: str, *overrides: str) -> None:
    out_dir = Path(out)
    recipe = load_recipe(recipe_name, list(overrides))
    record = Record()
    count_exchanges(record)
    with join(torch.device("cpu")) as world:
        experiment = Experiment(recipe, world=world, log=lambda m: None)
        experiment.load_data(data_dir)
        trainer = experiment.build_trainer(run=None, progress=False)
        trainer.callbacks.append(record)
        summary = trainer.fit()
        val_loader = experiment.eval_loader("val")
        together = validate(trainer.model, val_loader, recipe.train.precision, world)
        alone = validate(trainer.model, val_loader, recipe.train.precision)
        torch.save(trainer.model.state_dict(), out_dir / f"rank{world.rank}.pt")
        (out_dir / f"rank{world.rank}.json").write_text(json.dumps({
            "world_size": world.size, "digests": record.digests, "exchanges": record.exchanges,
            "summary": summary,
            "val_together": together, "val_alone": alone,
            "sync_bn": trainer.parallel.sync_bn}))


if __name__ == "__main__":
    main(*sys.argv[1:])
