"""The experiment: what every command builds once from a resolved recipe and then shares.

    recipe -> device and precision (checked before any work)
           -> data: arrays, the held-out split, normalization, and the splits as tensors on the device
           -> loaders (training: shuffled and augmented; validation and test: plain)
           -> a fresh model (seeded, budget-checked, prepared from the training images)
           -> a trainer with the recipe's callbacks
           -> inference on any split or array of images

`cifarkit train` trains and then evaluates with the same object, so the data is read and verified
once and the trained models are evaluated from memory; `bench` reuses it across seeds; `evaluate`
and `predict` use the same loaders and the same inference path.

Under torchrun an experiment is one rank of a `World` (train/distributed.py): it holds the same
data and builds the same model as every other rank; its trainer computes its share of each batch
(train/parallel.py); only rank 0 gets the run directory's callbacks and the progress display.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor, nn

from cifarkit.augment.pipeline import build_augment, describe_augment
from cifarkit.config import Recipe
from cifarkit.data.loader import DeviceLoader
from cifarkit.data.prepare import PreparedData, prepare_data
from cifarkit.device import check_training_precision, emulated_bf16_warning, inference_precision, resolve_device
from cifarkit.evaluate.inference import infer
from cifarkit.models.registry import build_model, check_budget
from cifarkit.models.trainable import TrainableModel
from cifarkit.rundir import RunDir
from cifarkit.seeding import seed_everything
from cifarkit.train.callbacks import build_callbacks
from cifarkit.train.cpu_setup import prepare_cpu_training
from cifarkit.train.distributed import World
from cifarkit.train.trainer import Trainer

SPLITS = ("train", "val", "test")


class Experiment:
    def __init__(self, recipe: Recipe, *, device: str | torch.device | None = None,
                 log: Callable[[str], None] = print, world: World | None = None):
        self.recipe = recipe
        if world is not None:
            device = world.device
        self.device = device if isinstance(device, torch.device) else resolve_device(device or recipe.device)
        self.world = world or World(device=self.device)
        self.log = log
        self.data: PreparedData | None = None
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}

    # -- before any work -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.data.num_classes if self.data is not None else self.recipe.data.num_classes

    @property
    def channels_last(self) -> bool:
        return self.recipe.train.channels_last

    def check(self) -> int:
        """Refuse what would otherwise fail later -- a precision the device cannot train in, a model
        over the parameter budget -- before any data is read or file written. Returns the
        parameter count."""
        check_training_precision(self.recipe.train.precision, self.device)
        warning = emulated_bf16_warning(self.recipe.train.precision, self.device)
        if warning:
            self.log(warning)
        with torch.random.fork_rng(devices=[]):       # a throwaway model must not move the seed
            model = build_model(self.recipe.model, self.num_classes)
        return check_budget(model, self.recipe.budget, self.recipe.allow_over_budget)

    def with_recipe(self, recipe: Recipe, *, log: Callable[[str], None] | None = None) -> Experiment:
        """The same data (loaded once) under another recipe of the same data section: another seed,
        a shorter warm-up run, a sweep trial."""
        if recipe.data != self.recipe.data:
            raise ValueError("with_recipe needs a recipe with the same data section")
        other = Experiment(recipe, device=self.device, log=self.log if log is None else log, world=self.world)
        other.data, other._splits = self.data, self._splits
        return other

    def with_seed(self, seed: int) -> Experiment:
        """The same experiment for another seed, sharing the loaded data."""
        return self.with_recipe(dataclasses.replace(self.recipe, seed=seed))

    # -- data ----------------------------------------------------------------------------------
    def load_data(self, data_dir=None) -> PreparedData:
        """Read, verify and split the dataset (once per experiment)."""
        if self.data is None:
            self.data = prepare_data(self.recipe.data, data_dir, log=self.log)
        return self.data

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """(uint8 images, int64 labels) of "train", "val" or "test", on the device (moved once)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; choose {', '.join(SPLITS)}")
        if name not in self._splits:
            data = self._require_data()
            arrays = data.arrays
            if name == "test":
                images, labels = arrays.test_images, arrays.test_labels
            else:
                idx = data.train_idx if name == "train" else data.val_idx
                images, labels = arrays.train_images[idx], arrays.train_labels[idx]
            self._splits[name] = (torch.from_numpy(images).to(self.device), torch.from_numpy(labels).to(self.device))
        return self._splits[name]

    def train_loader(self, augment=None) -> DeviceLoader:
        images, labels = self.split("train")
        return self._loader(images, labels, self.recipe.train.batch_size, train=True, augment=augment)

    def eval_loader(self, name: str) -> DeviceLoader | None:
        """Un-augmented batches of a split in order, or None for an empty split (no validation)."""
        images, labels = self.split(name)
        if len(labels) == 0:
            return None
        return self._loader(images, labels, self.recipe.eval.batch_size, train=False)

    def _loader(self, images, labels, batch_size: int, *, train: bool, augment=None) -> DeviceLoader:
        data = self._require_data()
        return DeviceLoader(images, labels, batch_size=batch_size, device=self.device, mean=data.mean, std=data.std,
                            shuffle=train, drop_last=train, augment=augment, channels_last=self.channels_last,
                            seed=self.recipe.seed)

    def _require_data(self) -> PreparedData:
        if self.data is None:
            raise RuntimeError("Experiment.load_data() must run before its splits are used")
        return self.data

    # -- models and training -------------------------------------------------------------------
    def build_model(self) -> TrainableModel:
        """A freshly initialized model from the recipe's seed, checked against the budget."""
        seed_everything(self.recipe.seed)
        if self.device.type == "cpu":
            prepare_cpu_training()
        else:   # shapes are fixed (the training loader drops the last partial batch): let cuDNN choose
            torch.backends.cudnn.benchmark = True
        model = build_model(self.recipe.model, self.num_classes)
        n_params = check_budget(model, self.recipe.budget, self.recipe.allow_over_budget)
        self.log(f"model {self.recipe.model.arch}: {n_params:,} parameters (budget {self.recipe.budget:,})")
        return model

    def build_trainer(self, run: RunDir | None = None, *, progress: bool = True) -> Trainer:
        """Model, loaders, trainer and callbacks. Without `run` nothing is written (benchmarks);
        ranks other than 0 write nothing and show no progress."""
        data = self._require_data()
        recipe = self.recipe
        model = self.build_model()
        augment = build_augment(recipe.augment, data.mean, seed=recipe.seed, std=data.std)
        self.log("augmentation: " + (", ".join(describe_augment(recipe.augment)) or "none"))
        train_loader = self.train_loader(augment)
        val_loader = self.eval_loader("val")
        if getattr(model, "prepare_images", 0):
            model.prepare(train_loader.plain_images(model.prepare_images))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model.to(self.device, memory_format=memory_format)
        trainer = Trainer(recipe, model, train_loader, device=self.device, num_classes=data.num_classes,
                          normalization=data.normalization(), log=self.log, world=self.world)
        main = self.world.is_main
        trainer.callbacks = build_callbacks(recipe, model, train_loader=train_loader, val_loader=val_loader,
                                            steps_per_epoch=trainer.steps_per_epoch, run=run if main else None,
                                            progress=progress and main)
        return trainer

    # -- inference -----------------------------------------------------------------------------
    def predict(self, model: nn.Module, split: str, *, tta: str | None = None, fraction: float | None = None,
                output: str = "probs") -> Tensor:
        """Scores (N, C) on the CPU of `model` (already on the device) for a split, with the
        recipe's test-time augmentation and selective-TTA fraction unless `tta` / `fraction` say otherwise."""
        loader = self.eval_loader(split)
        if loader is None:
            raise ValueError(f"the '{split}' split is empty")
        data = self._require_data()
        return infer(model, loader, mode=tta or self.recipe.eval.tta, device=self.device, stats=(data.mean, data.std),
                     precision=inference_precision(self.recipe.train.precision, self.device),
                     batch_size=self.recipe.eval.batch_size,
                     fraction=self.recipe.eval.tta_fraction if fraction is None else fraction, output=output)


__all__ = ["Experiment", "SPLITS"]
