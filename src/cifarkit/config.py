"""The typed recipe: dataclasses, YAML load/dump and `--set key=value` overrides.

A recipe is data. Loading validates every key (unknown keys name the nearest valid one), every
type and every range, so a bad recipe fails before any work starts. The file is longer than our
usual modules on purpose: every recipe knob, its unit and its range check sit in one place.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from cifarkit.errors import ConfigError
from cifarkit.models.specs import MODEL_SPECS, ModelSpec, ResNetSpec
from cifarkit.schema import check, coerce, nearest, parse_dataclass, to_dict

Precision = Literal["auto", "fp32", "bf16", "fp16"]
MAX_WARMUP_EPOCHS = 1e6
MAX_BASE_DEPTH = 16                       # recipes a `base:` chain may pass through
# A recipe's name names its run folder (runs/<name>-s<seed>), so it may not leave runs/.
RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# The per-image augmentation slots, in their default order (`augment.order` may permute them).
# "policy" is AutoAugment, RandAugment or TrivialAugment, whichever `augment.policy` names.
AUGMENT_OPS = ("crop", "flip", "policy", "color_jitter", "rotation", "perspective", "erasing", "cutout", "resize")


@dataclass
class DataConfig:
    dataset: Literal["cifar10", "cifar100"] = "cifar10"
    label_mode: Literal["fine", "coarse"] = "fine"   # CIFAR-100: 100 fine or 20 coarse classes
    val_size: int = 5000                  # held-out, stratified; 0 = train on all 50k
    split_seed: int = 0                   # the split stays fixed across training seeds
    train_subset: int = 0                 # train on a stratified subset of this many images; 0 = all
    download: bool = True                 # fetch over HTTPS when no local copy is found
    verify: bool = True                   # check CIFAR-10 pixels and labels by content hash

    @property
    def num_classes(self) -> int:
        """Classes the labels name: 10, 100, or CIFAR-100's 20 coarse ones (what the head needs)."""
        if self.dataset == "cifar10":
            return 10
        return 20 if self.label_mode == "coarse" else 100

    def validate(self) -> None:
        check(0 <= self.val_size < 50000, "'data.val_size' must be in [0, 50000)")
        check(self.train_subset >= 0, "'data.train_subset' must be >= 0")
        check(self.label_mode == "fine" or self.dataset == "cifar100",
              "'data.label_mode: coarse' needs 'data.dataset: cifar100' (CIFAR-10 has one set of labels)")


@dataclass
class AugmentConfig:
    """Applied per image, in the order `order` gives (by default crop, flip, policy, color jitter,
    rotation, perspective, erasing, cutout, then the progressive resize). Mixing (MixUp/CutMix)
    acts on whole batches after normalization."""

    crop_padding: int = 4                 # random crop after padding by this many pixels; 0 = off
    crop_mode: Literal["zeros", "reflect"] = "zeros"
    flip: Literal["none", "random", "alternate"] = "random"   # alternate: flip every other epoch per image
    policy: Literal["none", "autoaugment", "randaugment", "trivialaugment"] = "none"
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    color_jitter: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # brightness, contrast, saturation, hue
    rotation: float = 0.0                 # degrees, uniform in [-r, r]
    perspective: float = 0.0              # distortion scale; 0 = off
    perspective_p: float = 0.5
    erasing_p: float = 0.0                # RandomErasing with probability erasing_p per image
    # what erased boxes are painted with, as torchvision's RandomErasing `value` where a reference put it:
    #   mean    the dataset mean colour: value=0 after Normalize (reference 000)
    #   0       black: value=0 before Normalize (reference 002)
    #   random  per-pixel standard normal noise in normalized units: value="random" after Normalize
    erasing_fill: Literal[0, "mean", "random"] = "mean"
    erasing_scale: list[float] = field(default_factory=lambda: [0.02, 0.33])
    erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3])
    cutout: int = 0                       # square side in pixels; 0 = off
    # progressive resizing: [[size, until_epoch], ...] trains epochs < until_epoch on images
    # downscaled to size x size (antialiased), e.g. [[24, 4]]; later epochs at the native size
    resize_schedule: list[list[int]] = field(default_factory=list)
    mixup_p: float = 0.0                  # per batch: MixUp with probability mixup_p,
    mixup_alpha: float = 1.0              #   else CutMix with probability cutmix_p, else nothing
    cutmix_p: float = 0.0
    cutmix_alpha: float = 1.0
    # linear: alphas fall linearly to 0 at mix_until; linear_to_end: alphas fall linearly to 0 at the
    # end of training, alpha x (1 - progress), and are cut off at mix_until (reference 000)
    mix_decay: Literal["none", "linear", "linear_to_end"] = "none"
    mix_until: float = 1.0                # fraction of training after which mixing is off
    order: list[str] = field(default_factory=lambda: list(AUGMENT_OPS))   # a permutation of AUGMENT_OPS

    def validate(self) -> None:
        check(0 <= self.crop_padding <= 16, "'augment.crop_padding' must be in [0, 16]")
        check(len(self.color_jitter) == 4, "'augment.color_jitter' must be [brightness, contrast, saturation, hue]")
        check(all(v >= 0 for v in self.color_jitter), "'augment.color_jitter' entries must be >= 0")
        check(self.color_jitter[3] <= 0.5, "'augment.color_jitter' hue must be <= 0.5")
        check(0 <= self.rotation <= 180, "'augment.rotation' must be in [0, 180] degrees")
        check(0 <= self.perspective <= 1, "'augment.perspective' must be in [0, 1]")
        check(0 <= self.randaugment_magnitude <= 30, "'augment.randaugment_magnitude' must be in [0, 30]")
        check(self.randaugment_ops >= 1, "'augment.randaugment_ops' must be >= 1")
        check(0 <= self.cutout <= 32, "'augment.cutout' must be in [0, 32]")
        check(len(self.erasing_scale) == 2 and 0 < self.erasing_scale[0] <= self.erasing_scale[1] <= 1,
              "'augment.erasing_scale' must be [low, high] with 0 < low <= high <= 1")
        check(len(self.erasing_ratio) == 2 and 0 < self.erasing_ratio[0] <= self.erasing_ratio[1],
              "'augment.erasing_ratio' must be [low, high] with 0 < low <= high")
        for name in ("perspective_p", "erasing_p", "mixup_p", "cutmix_p", "mix_until"):
            check(0 <= getattr(self, name) <= 1, f"'augment.{name}' must be in [0, 1]")
        check(self.mixup_p + self.cutmix_p <= 1, "'augment.mixup_p' + 'augment.cutmix_p' must be <= 1")
        check(self.mixup_alpha > 0 and self.cutmix_alpha > 0, "mixing alphas must be positive")
        check(not isinstance(self.erasing_fill, bool), "'augment.erasing_fill' must be 0, mean or random")
        check(sorted(self.order) == sorted(AUGMENT_OPS),
              f"'augment.order' must list each of {', '.join(AUGMENT_OPS)} exactly once, got {list(self.order)}")
        until = 0
        for entry in self.resize_schedule:
            check(len(entry) == 2, "'augment.resize_schedule' entries are [size, until_epoch]")
            check(8 <= entry[0] <= 64, "'augment.resize_schedule' sizes must be in [8, 64] pixels")
            check(entry[1] > until, "'augment.resize_schedule' until_epoch values must increase from >= 1")
            until = entry[1]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    micro_batch: int = 0                  # split each batch into pieces this big (gradients accumulate); 0 = off
    # several processes (torchrun): BatchNorm statistics over all ranks' images (SyncBatchNorm).
    # auto = on exactly when a rank would otherwise normalize fewer images than one process does
    # (no micro-batching, or micro-batches larger than a rank's share of the batch); off when every
    # rank's share is a whole number of micro-batches (then each piece is normalized as in one process)
    sync_bn: Literal["auto", True, False] = "auto"
    optimizer: Literal["sgd", "adamw", "muon"] = "sgd"
    lr: float = 0.1                       # peak learning rate
    momentum: float = 0.9
    nesterov: bool = False
    dampening: float = 0.0
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    no_decay_norm_bias: bool = False      # no weight decay on BN parameters and biases
    bias_lr_scale: float = 1.0            # BN biases: lr x this, weight decay / this (lr x wd unchanged)
    whiten_bias_lr_scale: float | None = None  # fastnet whitening bias: lr x this, weight decay / this;
                                          # null = trained like the other weights (airbench94)
    whiten_bias_decay: bool = False       # fastnet whitening bias: lr falls linearly to 0 at the step it
                                          # freezes (model.whiten_bias_epochs) instead of following the
                                          # schedule (airbench94_muon)
    muon_lr: float | None = None          # optimizer muon: peak lr of the conv filters; null = lr
    muon_momentum: float | None = None    # optimizer muon: momentum of the conv filters; null = momentum
    muon_ns_steps: int = 5                # Newton-Schulz iterations per orthogonalization
    schedule: Literal["cosine", "onecycle", "step", "constant", "linear"] = "cosine"
    warmup_epochs: float = 0.0            # linear warmup from warmup_start_lr (capped at epochs)
    warmup_start_lr: float = 0.0
    min_lr: float = 0.0                   # floor of cosine / linear decay
    # cosine / linear decay from lr at decay_start_epoch to min_lr at decay_end_epoch (lr before,
    # min_lr after); null = from the end of the warmup / to the end of training
    decay_start_epoch: float | None = None
    decay_end_epoch: float | None = None
    # step: the rate changes every optimizer step; epoch: it is held for a whole epoch at the value
    # of the epoch's first step (a torch scheduler stepped once per epoch)
    lr_update: Literal["step", "epoch"] = "step"
    onecycle_pct_start: float = 0.1
    step_epochs: int = 30                 # step schedule: multiply by step_gamma every step_epochs
    step_gamma: float = 0.1
    loss: Literal["ce", "focal"] = "ce"
    label_smoothing: float = 0.0
    # uniform: t' = (1 - eps) t + eps / C, torch's label_smoothing; other_classes: the true class gets
    # 1 - eps and every other class eps / (C - 1) (references 000 and 002)
    label_smoothing_form: Literal["uniform", "other_classes"] = "uniform"
    focal_gamma: float = 1.0
    precision: Precision = "auto"            # auto: bf16 on hardware with native bf16, else fp32
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 0.0                # max global grad norm; 0 = off
    ema_decay: float = 0.0                # per-step EMA of the weights; 0 = off
    # average: BN running statistics are averaged like the weights; copy: only parameters are
    # averaged, buffers are copied from the live model at every update (references 000 and 004)
    ema_buffers: Literal["average", "copy"] = "average"
    # which EMA weights `ema.pt` keeps: last = at the end of training; at_best = the EMA of the
    # epoch with the best live validation accuracy (reference 000); best = the EMA of the epoch
    # with its own best validation accuracy (reference 004); the last two need a validation split
    ema_keep: Literal["last", "at_best", "best"] = "last"
    lookahead_every: int = 0              # speed-run lookahead average every N steps; 0 = off
    swa_start: float = 0.0                # fraction of training after which SWA averages each epoch; 0 = off
    swa_lr: float | None = None           # constant lr during SWA; null = keep the schedule
    early_stopping_patience: int = 0      # epochs without validation improvement; 0 = off
    on_nonfinite: Literal["stop", "skip"] = "stop"

    def validate(self) -> None:
        check(self.epochs >= 1, "'train.epochs' must be >= 1")
        check(self.batch_size >= 1, "'train.batch_size' must be >= 1")
        check(0 <= self.micro_batch, "'train.micro_batch' must be >= 0")
        check(self.sync_bn == "auto" or isinstance(self.sync_bn, bool),
              f"'train.sync_bn' must be auto, true or false, got {self.sync_bn!r}")
        check(self.lr > 0, "'train.lr' must be positive")
        check(0 <= self.momentum < 1, "'train.momentum' must be in [0, 1)")
        check(0 <= self.dampening < 1, "'train.dampening' must be in [0, 1)")
        check(self.weight_decay >= 0, "'train.weight_decay' must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "'train.betas' must be two values in [0, 1)")
        # The warmup is capped at `epochs` anyway; the upper bound keeps warmup x steps a countable number.
        check(0 <= self.warmup_epochs <= MAX_WARMUP_EPOCHS,
              f"'train.warmup_epochs' must be in [0, {MAX_WARMUP_EPOCHS:g}] (it is capped at 'train.epochs')")
        check(self.warmup_start_lr >= 0 and self.min_lr >= 0, "learning-rate floors must be >= 0")
        if self.decay_start_epoch is not None or self.decay_end_epoch is not None:
            start = self.warmup_epochs if self.decay_start_epoch is None else self.decay_start_epoch
            end = self.epochs if self.decay_end_epoch is None else self.decay_end_epoch
            check(0 <= start < end, f"the learning-rate decay must start at an epoch >= 0 and before it ends "
                                    f"(from epoch {start:g} to epoch {end:g})")
        check(0 < self.onecycle_pct_start < 1, "'train.onecycle_pct_start' must be in (0, 1)")
        check(self.step_epochs >= 1 and 0 < self.step_gamma <= 1, "'train.step_*' out of range")
        check(0 <= self.label_smoothing < 1, "'train.label_smoothing' must be in [0, 1)")
        check(self.label_smoothing_form == "uniform" or self.label_smoothing <= 0.5,
              "'train.label_smoothing' must be <= 0.5 with 'train.label_smoothing_form: other_classes'")
        check(self.focal_gamma >= 0, "'train.focal_gamma' must be >= 0")
        check(self.grad_clip >= 0, "'train.grad_clip' must be >= 0")
        check(self.bias_lr_scale > 0, "'train.bias_lr_scale' must be positive")
        check(self.whiten_bias_lr_scale is None or self.whiten_bias_lr_scale > 0,
              "'train.whiten_bias_lr_scale' must be positive")
        check(self.muon_lr is None or self.muon_lr > 0, "'train.muon_lr' must be positive")
        check(self.muon_momentum is None or 0 <= self.muon_momentum < 1, "'train.muon_momentum' must be in [0, 1)")
        check(1 <= self.muon_ns_steps <= 20, "'train.muon_ns_steps' must be in [1, 20]")
        check(self.lookahead_every >= 0, "'train.lookahead_every' must be >= 0")
        check(0 <= self.ema_decay < 1, "'train.ema_decay' must be in [0, 1)")
        check(0 <= self.swa_start < 1, "'train.swa_start' must be in [0, 1)")
        check(self.early_stopping_patience >= 0, "'train.early_stopping_patience' must be >= 0")
        check(not (self.nesterov and self.dampening), "'train.nesterov' needs 'train.dampening: 0'")


@dataclass
class EvalConfig:
    tta: Literal["none", "flip", "flip_translate", "view8", "views000", "views004"] = "flip"
    tta_fraction: float = 1.0             # selective TTA: share of images (least confident under the
                                          # two unshifted views) that get every view; 1 = all
    batch_size: int = 1000
    ensemble: list[str] = field(default_factory=list)   # e.g. [best, ema, swa]: averaged probabilities
    # the headline model: chosen on the validation split (the default), or fixed by the recipe
    # (a reference system that deployed one model whatever the validation said)
    select: Literal["validation", "final", "best", "ema", "swa", "ensemble"] = "validation"

    def validate(self) -> None:
        check(self.batch_size >= 1, "'eval.batch_size' must be >= 1")
        check(0 < self.tta_fraction <= 1, "'eval.tta_fraction' must be in (0, 1]")
        # Selective TTA scores every image first with identity and flip at equal weights.
        check(self.tta_fraction == 1 or self.tta != "views004",
              "'eval.tta_fraction' < 1 needs a TTA mode whose identity and flip views weigh the same; "
              "views004 weighs the identity twice")
        for member in self.ensemble:
            check(member in ("final", "best", "ema", "swa"),
                  f"'eval.ensemble' members must be final, best, ema or swa, got '{member}'")


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    budget: int = 5_000_000                # parameter budget; `allow_over_budget` lifts it
    allow_over_budget: bool = False
    target_accuracy: float | None = None   # speed recipes: the accuracy a benchmark tests against
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ResNetSpec)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        check(RECIPE_NAME.fullmatch(self.name) is not None and ".." not in self.name,
              f"'name' {self.name!r:.70} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
              "letter or digit and without '..' (it names the run folder runs/<name>-s<seed>); set "
              "'name:' in the recipe or pass --set name=...")
        check(self.budget > 0, "'budget' must be positive")
        if self.target_accuracy is not None:
            check(0 < self.target_accuracy < 1, "'target_accuracy' is a fraction in (0, 1)")
        if self.data.val_size == 0:
            check(self.train.early_stopping_patience == 0,
                  "'train.early_stopping_patience' needs a validation split ('data.val_size' > 0)")
            check(self.train.ema_keep == "last",
                  f"'train.ema_keep: {self.train.ema_keep}' needs a validation split ('data.val_size' > 0)")
        if self.train.ema_keep != "last":
            check(self.train.ema_decay > 0, f"'train.ema_keep: {self.train.ema_keep}' needs 'train.ema_decay' > 0")
        if self.eval.select == "ensemble":
            check(len(self.eval.ensemble) >= 2, "'eval.select: ensemble' needs at least two 'eval.ensemble' members")


RECIPE_SECTIONS = {f.name for f in dataclasses.fields(Recipe)}


def recipe_from_dict(data: Any) -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"a recipe must be a mapping of sections, got {type(data).__name__}")
    data = copy.deepcopy(data)
    model = data.pop("model", None) or {}
    if not isinstance(model, dict):
        raise ConfigError("'model' must be a mapping")
    arch = model.get("arch", "resnet")
    if arch not in MODEL_SPECS:
        raise ConfigError(f"unknown model.arch '{arch}'; choose one of {', '.join(MODEL_SPECS)}")
    recipe = parse_dataclass(Recipe, data)
    recipe.model = parse_dataclass(MODEL_SPECS[arch], model, "model.")
    recipe.validate()
    if recipe.train.whiten_bias_lr_scale is not None or recipe.train.whiten_bias_decay:
        check(arch == "fastnet", "'train.whiten_bias_lr_scale' and 'train.whiten_bias_decay' need 'model.arch: fastnet'")
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def builtin_recipe_names() -> list[str]:
    folder = resources.files("cifarkit") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_recipe_text(name: str) -> str:
    path = resources.files("cifarkit") / "recipes" / f"{name}.yaml"
    if not path.is_file():
        names = builtin_recipe_names()
        hint = nearest(name, names, cutoff=0.6)     # a suggestion only when it is a likely typo
        raise ConfigError(f"unknown recipe '{name}'" + (f"; did you mean '{hint}'?" if hint else "")
                          + f" (built-in: {', '.join(names)}; or give a .yaml path)")
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class _RecipeSource:
    """Where a recipe's text comes from: a YAML file, or a built-in recipe (by name)."""

    label: str                 # how messages name it: the path as given, or the built-in's name
    path: Path | None = None   # None for a built-in

    @property
    def key(self) -> tuple[str, str]:
        # Loops are found by identity, not by spelling: 'loop2', 'loop2.yaml' and './loop2.yaml'
        # in one folder are the same file.
        return ("file", str(self.path.resolve())) if self.path else ("builtin", self.label)

    def text(self) -> str:
        return self.path.read_text(encoding="utf-8") if self.path else builtin_recipe_text(self.label)


def _top_source(name_or_path: str) -> _RecipeSource:
    """The recipe a user names on the command line: a path (relative to the current folder) or a built-in."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        return _RecipeSource(name_or_path, path)
    builtin_recipe_text(name_or_path)          # an unknown name fails here, naming the nearest
    return _RecipeSource(name_or_path)


def _base_source(base: str, child: _RecipeSource) -> _RecipeSource:
    """`base:` inside a recipe: a file next to that recipe (`x.yaml`, or `x` for `x.yaml`), else a built-in.

    Never the current folder: a recipe means the same wherever the command is run from."""
    looked = []
    if child.path is not None:
        folder = child.path.parent
        candidates = [folder / base] + ([folder / f"{base}.yaml"] if not Path(base).suffix else [])
        for candidate in candidates:
            if candidate.is_file():
                return _RecipeSource(str(candidate), candidate)
        looked += [str(c) for c in candidates]
    name = base[: -len(Path(base).suffix)] if Path(base).suffix in (".yaml", ".yml") else base
    if "/" not in name and "\\" not in name and name in builtin_recipe_names():
        return _RecipeSource(name)
    raise ConfigError(f"recipe {child.label}: base '{base}' not found (looked for "
                      + ", ".join(looked + ["a built-in recipe of that name"]) + ")")


def load_recipe_dict(name_or_path: str) -> dict:
    """A built-in recipe name (`seed002`) or a path to a YAML file.

    A recipe may start from another with `base: NAME_OR_PATH`, looked up next to the recipe that
    names it, then among the built-ins; its own keys then override the base's, section by section
    (a small file can say only what it changes). A chain that loops is an error.
    """
    return _load_chain(_top_source(name_or_path), ())


def _load_chain(source: _RecipeSource, chain: tuple[_RecipeSource, ...]) -> dict:
    if source.key in {s.key for s in chain}:
        names = " -> ".join(s.label for s in (*chain, source))
        raise ConfigError(f"recipe {chain[0].label}: the 'base' chain loops ({names})")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ConfigError(f"recipe {chain[0].label}: the 'base' chain is longer than {MAX_BASE_DEPTH} recipes")
    try:
        data = yaml.safe_load(source.text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"recipe {source.label} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {source.label} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {source.label} must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"recipe {source.label}: 'base' must name a recipe")
    return merge_recipe_dicts(_load_chain(_base_source(base, source), (*chain, source)), data)


def merge_recipe_dicts(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_recipe_dicts(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings; values are parsed as YAML (`0.1`, `true`, `[1,2]`)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=5")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    data = load_recipe_dict(name_or_path)
    data.setdefault("name", Path(name_or_path).stem)
    return recipe_from_dict(apply_overrides(data, overrides or []))


def recipe_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two recipe dicts, as dotted paths."""
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += recipe_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return diffs


__all__ = [
    "Recipe", "DataConfig", "AugmentConfig", "TrainConfig", "EvalConfig", "load_recipe", "recipe_from_dict",
    "recipe_to_dict", "dump_recipe", "apply_overrides", "builtin_recipe_names", "recipe_diff", "coerce",
]
