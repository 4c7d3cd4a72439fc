"""The reference recipes seed000 ... seed004 against the values their original code used.

ORIGINALS holds, per recipe, the original's value of every recipe key it has an equivalent for, as read
in the original code (the comments name the file and the line of code each value comes from). A
recipe may differ from that table only where its header names the key as a deviation, in a bullet
`# - [section.key, ...] reason`; a key named there whose value equals the original's is a stale note
and fails as well. So an edit can neither drift from the original silently nor leave a false note.
"""

from __future__ import annotations

import math
import re

import pytest

from cifarkit.config import AUGMENT_OPS, builtin_recipe_text, load_recipe, recipe_to_dict
from cifarkit.models.registry import build_model

DEFAULT_ORDER = list(AUGMENT_OPS)
NO_JITTER = [0.0, 0.0, 0.0, 0.0]

# fzinnah17/cifar10-resnet-classification, script.ipynb at commit c3522f6 (the commit that added the
# submission.csv of the published run), cells "Step 2" to "Step 8".
ORIGINAL_000 = {
    "data.val_size": 5000,                    # random_split(dataset, [45000, 5000], seed 42)
    "model.stem_width": 40,                   # OptimizedResNet(initial_channels=40)
    "model.widths": [40, 80, 160],            # initial_channels * 1, 2, 4
    "model.blocks": [3, 5, 3],                # num_blocks=[3, 5, 3]
    "model.attention": "se",                  # BasicBlock(use_se=True): SEBlock after bn2
    "model.se_reduction": 8,                  # se_reduction=8
    "model.se_bias": True,                    # SEBlock: nn.Conv2d(channels, channels // 8, 1), bias on
    "model.dropout": 0.2,                     # drop_rate=0.2, F.dropout before fc
    "model.pool": "adaptive",                 # nn.AdaptiveAvgPool2d((1, 1))
    "model.init": "kaiming_fan_out",          # _initialize_weights: kaiming_normal_(fan_out, relu) on convs
    "model.head_init": "kaiming_normal",      # _initialize_weights: nn.init.kaiming_normal_(fc.weight), bias 0
    "augment.crop_padding": 4,                # transforms.RandomCrop(32, padding=4)
    "augment.crop_mode": "zeros",             # RandomCrop's default constant fill 0
    "augment.flip": "random",                 # transforms.RandomHorizontalFlip()
    "augment.policy": "autoaugment",          # transforms.AutoAugment(AutoAugmentPolicy.CIFAR10)
    "augment.color_jitter": NO_JITTER,
    "augment.rotation": 0.0,
    "augment.perspective": 0.0,
    "augment.erasing_p": 0.25,                # transforms.RandomErasing(p=0.25)
    "augment.erasing_scale": [0.02, 0.33],    # RandomErasing's defaults
    "augment.erasing_ratio": [0.3, 3.3],
    "augment.erasing_fill": "mean",           # value=0, after transforms.Normalize: the mean colour
    "augment.cutout": 0,
    "augment.order": DEFAULT_ORDER,           # crop, flip, AutoAugment, (Normalize), RandomErasing
    "augment.mixup_p": 0.5,                   # aug_prob < 0.5: mixup_data
    "augment.mixup_alpha": 0.4,               # 0.4 * (1 - epoch / num_epochs)
    "augment.cutmix_p": 0.3,                  # aug_prob < 0.8: cutmix_data
    "augment.cutmix_alpha": 1.0,              # 1.0 * (1 - epoch / num_epochs)
    "augment.mix_decay": "linear_to_end",     # alpha * (1 - epoch / num_epochs)
    "augment.mix_until": 155 / 195,           # late_training = epoch >= int(195 * 0.8), epoch 1-based
    "train.epochs": 195,                      # train_model(..., num_epochs=195)
    "train.batch_size": 128,                  # DataLoader(train_dataset, batch_size=128)
    "train.optimizer": "sgd",                 # optim.SGD(..., nesterov=True)
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.nesterov": True,
    "train.dampening": 0.0,
    "train.weight_decay": 5e-4,
    "train.no_decay_norm_bias": False,        # weight decay on model.parameters(), BN included
    "train.schedule": "cosine",               # CosineWarmupScheduler
    "train.warmup_epochs": 5.0,               # warmup_epochs=5: min_lr + (max_lr - min_lr) * epoch / 5
    "train.warmup_start_lr": 1e-6,            # min_lr=1e-6
    "train.min_lr": 1e-6,
    "train.decay_start_epoch": None,          # progress = (epoch - 5) / (num_epochs - 5)
    "train.decay_end_epoch": None,
    "train.lr_update": "epoch",               # scheduler.step(epoch - 1) once at the start of each epoch
    "train.loss": "focal",                    # FocalLabelSmoothing(classes=10, smoothing=0.1, gamma=1.0)
    "train.label_smoothing": 0.1,
    "train.label_smoothing_form": "other_classes",   # true_dist.fill_(smoothing / (classes - 1))
    "train.focal_gamma": 1.0,
    "train.precision": "fp32",                # no autocast
    "train.grad_clip": 1.0,                   # clip_grad_norm_(model.parameters(), max_norm=1.0)
    "train.ema_decay": 0.999,                 # EMA(model, decay=0.999), updated every step
    "train.ema_buffers": "copy",              # EMA.register/update: named_parameters() only
    "train.ema_keep": "at_best",              # on a new best val_acc: save the model and the EMA together
    "train.swa_start": 145 / 195,             # swa_start = int(195 * 0.75); epoch >= swa_start, 1-based
    "train.swa_lr": None,                     # the schedule goes on during SWA
    "train.early_stopping_patience": 0,
    "eval.tta": "views000",                   # predict_with_enhanced_tta(num_tta=5): 6 views
    "eval.ensemble": ["best", "ema", "swa"],  # ensemble = [best_model, ema_model, swa_model]
    "eval.select": "ensemble",                # the submission is the ensemble's
}

# What 000's code really trained: val_dataset.dataset.transform = test_transform replaced the transform
# of the dataset object train_dataset shares, so no per-image augmentation ran (same notebook).
ORIGINAL_000_AS_RUN = {**ORIGINAL_000, "augment.crop_padding": 0, "augment.flip": "none",
                       "augment.policy": "none", "augment.erasing_p": 0.0}

# NxFerrara/cifar-10-classification, cifar-10-classification.ipynb at commit 3260a08.
ORIGINAL_001 = {
    "data.val_size": 5000,                    # train_size = int(0.9 * len(trainset))
    "model.stem_width": 48,                   # self.in_channels = 48
    "model.widths": [48, 96, 128, 364],       # self.channels = [48, 96, 128, 364]
    "model.blocks": [2, 2, 2, 2],             # custom_resnet18: [2, 2, 2, 2]
    "model.strides": [1, 2, 2, 2],            # _make_layer(..., stride=2) for layers 2-4
    "model.attention": "none",
    "model.dropout": 0.1,                     # dropout_rate=0.1
    "model.pool": "avg4",                     # nn.AvgPool2d(kernel_size=4, stride=1) on the 4x4 map
    "model.init": "kaiming_fan_out",          # kaiming_normal_(mode='fan_out', nonlinearity='relu'), BN 1/0
    "model.head_init": "torch",               # the Linear layer is left alone
    "augment.crop_padding": 4,                # transforms.RandomCrop(32, padding=4)
    "augment.crop_mode": "zeros",
    "augment.flip": "random",                 # transforms.RandomHorizontalFlip()
    "augment.policy": "none",
    "augment.color_jitter": NO_JITTER,
    "augment.rotation": 0.0,
    "augment.perspective": 0.0,
    "augment.erasing_p": 0.0,
    "augment.cutout": 0,
    "augment.mixup_p": 0.0,
    "augment.cutmix_p": 0.0,
    "train.epochs": 100,                      # num_epochs = 100
    "train.batch_size": 128,
    "train.optimizer": "sgd",                 # optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4)
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.nesterov": False,
    "train.dampening": 0.0,
    "train.weight_decay": 5e-4,
    "train.schedule": "onecycle",             # OneCycleLR(max_lr=0.1, epochs=100, pct_start=0.1)
    "train.onecycle_pct_start": 0.1,
    "train.lr_update": "step",                # scheduler.step() after every batch
    "train.loss": "ce",                       # nn.CrossEntropyLoss()
    "train.label_smoothing": 0.0,
    "train.precision": "fp32",
    "train.grad_clip": 0.0,
    "train.ema_decay": 0.0,
    "train.swa_start": 0.0,
    "train.early_stopping_patience": 10,      # patience = 10 on validation accuracy
    "eval.tta": "none",                       # generate_test_predictions: one view
    "eval.ensemble": [],
}

# rutujaingole/Deep-Learning-ECE-7123-2025-Spring-Mini-Project, code/ResNet-CIFAR10.ipynb at commit 992423e.
ORIGINAL_002 = {
    "data.val_size": 0,                       # trainset = CIFAR10(train=True): all 50,000 images
    "model.stem_width": 66,                   # self.in_planes = 66
    "model.widths": [66, 132, 264],
    "model.blocks": [3, 4, 3],                # ResNet(BasicBlock, [3, 4, 3])
    "model.attention": "none",
    "model.dropout": 0.0,
    "model.pool": "adaptive",                 # nn.AdaptiveAvgPool2d((1, 1))
    "model.init": "torch",                    # no init code
    "model.head_init": "torch",
    "augment.crop_padding": 4,                # transforms.RandomCrop(32, padding=4)
    "augment.crop_mode": "zeros",
    "augment.flip": "random",
    "augment.policy": "randaugment",          # transforms.RandAugment(num_ops=2, magnitude=9)
    "augment.randaugment_ops": 2,
    "augment.randaugment_magnitude": 9,
    "augment.color_jitter": NO_JITTER,
    "augment.rotation": 0.0,
    "augment.erasing_p": 0.5,                 # RandomErasing(p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3))
    "augment.erasing_scale": [0.02, 0.33],
    "augment.erasing_ratio": [0.3, 3.3],
    "augment.erasing_fill": 0,                # value=0 after ToTensor, before Normalize: black
    "augment.order": DEFAULT_ORDER,
    "augment.mixup_p": 0.0,
    "augment.cutmix_p": 0.0,
    "train.epochs": 60,                       # epochs = 60
    "train.batch_size": 128,
    "train.optimizer": "sgd",                 # optim.SGD(lr=0.1, momentum=0.9, weight_decay=2e-4)
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.nesterov": False,
    "train.weight_decay": 2e-4,
    "train.schedule": "cosine",               # warmup_with_cosine_lr, LambdaLR stepped after each epoch:
    "train.warmup_epochs": 10.0,              #   epoch / 10 for epoch < 10
    "train.warmup_start_lr": 0.0,
    "train.decay_start_epoch": 5.0,           #   0.5 * (1 + cos(pi * (epoch - 5) / (epochs - 5)))
    "train.decay_end_epoch": 60.0,
    "train.min_lr": 0.0,
    "train.lr_update": "epoch",
    "train.loss": "ce",                       # SmoothCrossEntropyLoss(smoothing=0.05)
    "train.label_smoothing": 0.05,
    "train.label_smoothing_form": "other_classes",   # smoothing / (input.size(-1) - 1.)
    "train.precision": "fp32",
    "train.grad_clip": 0.0,
    "train.ema_decay": 0.0,
    "eval.tta": "none",                       # evaluate(model, test_loader): one view
    "eval.ensemble": [],
}

# seionv/DL_2025_Project1, DL_2025_Project1.ipynb at commit e6cf03a, train_final_phase (step 9.2).
ORIGINAL_003 = {
    "data.val_size": 0,                       # train_final_phase(model, full_train_loader, ...): 50,000
    "model.stem_width": 64,                   # resnet_channels = 64
    "model.widths": [64, 128, 256],           # channel_list=[64, 128, 256, 512], block_list=[3, 5, 3, 0]
    "model.blocks": [3, 5, 3],
    "model.attention": "none",
    "model.dropout": 0.0,
    "model.pool": "adaptive",                 # F.adaptive_avg_pool2d(out, (1, 1))
    "model.init": "torch",                    # no init code
    "model.head_init": "torch",
    "augment.crop_padding": 4,                # transforms.RandomCrop(32, padding=4)
    "augment.crop_mode": "zeros",
    "augment.flip": "random",                 # transforms.RandomHorizontalFlip()
    "augment.policy": "autoaugment",          # transforms.AutoAugment(policy=AutoAugmentPolicy.CIFAR10)
    "augment.color_jitter": [0.2, 0.2, 0.2, 0.0],   # ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)
    "augment.rotation": 15.0,                 # transforms.RandomRotation(15)
    "augment.perspective": 0.0,
    "augment.erasing_p": 0.0,
    "augment.order": ["flip", "crop", "color_jitter", "policy", "rotation",   # train_transform_pipeline
                      "perspective", "erasing", "cutout", "resize"],
    "augment.mixup_p": 0.0,
    "augment.cutmix_p": 0.0,
    "train.epochs": 50,                       # total_epochs = 50
    "train.batch_size": 128,                  # train_batch_size = 128
    "train.optimizer": "adamw",               # optim.AdamW(lr=base_lr, weight_decay=weight_decay_factor)
    "train.lr": 0.01,                         # base_lr = 0.01
    "train.weight_decay": 1e-3,               # weight_decay_factor = 0.001
    "train.betas": [0.9, 0.999],              # AdamW's defaults
    "train.schedule": "cosine",               # LambdaLR(min(1, (epoch + 1) / 5)) stepped before each epoch
    "train.warmup_epochs": 3.0,               #   gives 0.004, 0.006, 0.008 and then 0.01 twice,
    "train.warmup_start_lr": 0.004,
    "train.decay_start_epoch": 4.0,           #   CosineAnnealingLR(T_max=total_epochs) from epoch 5 at
    "train.decay_end_epoch": 54.0,            #   its step epoch - 4: a cosine from epoch 4 to 4 + 50
    "train.min_lr": 1e-5,                     # eta_min = base_lr / 1000
    "train.lr_update": "epoch",
    "train.loss": "ce",                       # nn.CrossEntropyLoss()
    "train.label_smoothing": 0.0,
    "train.precision": "fp32",
    "train.grad_clip": 0.0,
    "train.ema_decay": 0.0,
    "eval.tta": "none",
    "eval.ensemble": [],
}

# prathamssaraf/Attention-Enhanced-ResNet-for-CIFAR-10-Classification: dl-project1.ipynb at commit
# 2ef15dc (the training run; src/models, src/training and src/data/augmentation.py hold the same code)
# and src/utils/common.py, enhanced_tta_prediction, at commit 87e7557.
ORIGINAL_004 = {
    "data.val_size": 5000,                    # train_size = int(0.9 * len(train_dataset))
    "model.stem_width": 31,                   # EnhancedEfficientResNet(base_width=31)
    "model.widths": [62, 124, 248, 248],      # base_width * 2, 4, 8, 8
    "model.blocks": [2, 2, 2, 2],
    "model.strides": [1, 2, 2, 1],
    "model.attention": "cbam004",             # sigmoid(MLP(avg)) + sigmoid(MLP(max)), then spatial attention
    "model.cbam_reduction": 16,               # reduction = max(out_channels // 16, 4)
    "model.cbam_kernel": 7,                   # SpatialAttention(kernel_size=7)
    "model.extra_conv": True,                 # extra_conv 1x1 + extra_bn + relu
    "model.dropout": 0.3,                     # nn.Dropout(0.3)
    "model.pool": "adaptive",
    "model.init": "kaiming_fan_out",          # _initialize_weights: every nn.Conv2d, attention convs included
    "model.head_init": "torch",
    "augment.crop_padding": 4,                # RandomCrop(32, padding=4, padding_mode='reflect')
    "augment.crop_mode": "reflect",
    "augment.flip": "random",
    "augment.policy": "none",
    "augment.rotation": 15.0,                 # RandomRotation(15)
    "augment.color_jitter": [0.1, 0.1, 0.1, 0.02],   # ColorJitter(0.1, 0.1, 0.1, hue=0.02)
    "augment.perspective": 0.1,               # RandomPerspective(distortion_scale=0.1, p=0.5)
    "augment.perspective_p": 0.5,
    "augment.erasing_p": 0.0,
    "augment.order": ["crop", "flip", "rotation", "color_jitter", "perspective",   # transform_train
                      "policy", "erasing", "cutout", "resize"],
    "augment.mixup_p": 0.3,                   # mixup_prob = 0.3, mixup_alpha = 1.0
    "augment.mixup_alpha": 1.0,
    "augment.cutmix_p": 0.3,                  # cutmix_prob = 0.3, cutmix_alpha = 1.0
    "augment.cutmix_alpha": 1.0,
    "augment.mix_decay": "none",
    "augment.mix_until": 1.0,
    "train.epochs": 500,                      # train_model(..., num_epochs=500)
    "train.batch_size": 128,
    "train.optimizer": "sgd",                 # optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    "train.lr": 0.1,
    "train.momentum": 0.9,
    "train.nesterov": True,
    "train.weight_decay": 5e-4,
    "train.schedule": "cosine",               # CosineAnnealingLR(T_max=num_epochs), eta_min 0
    "train.warmup_epochs": 0.0,
    "train.min_lr": 0.0,
    "train.decay_start_epoch": None,
    "train.decay_end_epoch": None,
    "train.lr_update": "epoch",               # scheduler.step() after each epoch
    "train.loss": "ce",                       # nn.CrossEntropyLoss(label_smoothing=0.1)
    "train.label_smoothing": 0.1,
    "train.label_smoothing_form": "uniform",
    "train.precision": "fp16",                # autocast() + GradScaler()
    "train.grad_clip": 1.0,                   # clip_grad_norm_(model.parameters(), max_norm=1.0)
    "train.ema_decay": 0.999,                 # EMA(model, decay=0.999), updated every step
    "train.ema_buffers": "copy",              # EMA: named_parameters() only
    "train.ema_keep": "best",                 # the EMA is validated; its best epoch's weights are kept
    "train.swa_start": 0.0,
    "eval.tta": "views004",                   # enhanced_tta_prediction: 8 weighted views, outputs / 0.9
    "eval.ensemble": [],
    "eval.select": "ema",                     # the best EMA is the deployed model
}

ORIGINALS = {
    "seed000": ORIGINAL_000,
    "seed000-as-run": ORIGINAL_000_AS_RUN,
    "seed001": ORIGINAL_001,
    "seed002": ORIGINAL_002,
    "seed003": ORIGINAL_003,
    "seed004": ORIGINAL_004,
}
# The parameter counts of the networks as their code builds them (SPEC section 2).
PARAMS = {"seed000": 1_953_575, "seed000-as-run": 1_953_575, "seed001": 4_997_722, "seed002": 4_916_284,
          "seed003": 4_918_602, "seed004": 4_913_705}

DEVIATION_HEADING = "# Deviations from the original code, each on purpose:"
BULLET = re.compile(r"^# - \[([^\]]+)\]")


def header(name: str) -> list[str]:
    """The comment block at the top of a built-in recipe."""
    lines = []
    for line in builtin_recipe_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def deviation_keys(lines: list[str]) -> set[str]:
    """Keys named by `# - [key, key] ...` bullets after the deviations heading."""
    assert DEVIATION_HEADING in lines, "the header must have a deviations section"
    keys: set[str] = set()
    for line in lines[lines.index(DEVIATION_HEADING) + 1:]:
        match = BULLET.match(line)
        if match:
            keys |= {k.strip() for k in match.group(1).split(",")}
    return keys


def value_at(recipe: dict, key: str):
    node = recipe
    for part in key.split("."):
        node = node[part]
    return node


def same(a, b) -> bool:
    """Equal values; numbers to 12 significant digits; a bool never equals a number."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return a == b


def test_the_header_parser_reads_keys_and_needs_the_heading():
    lines = ["# intro", DEVIATION_HEADING, "# - [train.precision] bf16", "# - no key here",
             "# - [data.val_size, train.epochs] two keys", "#   [not.a.bullet] continuation"]
    assert deviation_keys(lines) == {"train.precision", "data.val_size", "train.epochs"}
    with pytest.raises(AssertionError, match="deviations section"):
        deviation_keys(["# - [train.precision] bf16"])


def test_every_reference_recipe_has_a_table():
    from cifarkit.config import builtin_recipe_names
    references = {n for n in builtin_recipe_names() if n.startswith("seed00")}
    assert references == set(ORIGINALS)


def problems(table: dict, recipe: dict, named: set[str]) -> list[str]:
    """Every way `recipe` and its header disagree with the original's `table`."""
    found = [f"the header names {k}, which the table does not hold" for k in sorted(named - set(table))]
    found += [f"{k}: recipe {value_at(recipe, k)!r}, original {v!r}, and no deviation note" for k, v in table.items()
              if k not in named and not same(value_at(recipe, k), v)]
    found += [f"{k}: named as a deviation but equal to the original's {table[k]!r}" for k in sorted(named & set(table))
              if same(value_at(recipe, k), table[k])]
    return found


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_recipe_matches_its_original_except_named_deviations(name):
    recipe = recipe_to_dict(load_recipe(name))
    assert problems(ORIGINALS[name], recipe, deviation_keys(header(name))) == []


def test_drift_and_stale_notes_are_both_caught():
    named = deviation_keys(header("seed002"))
    drifted = recipe_to_dict(load_recipe("seed002", ["train.weight_decay=0.0005"]))
    assert problems(ORIGINAL_002, drifted, named) == [
        "train.weight_decay: recipe 0.0005, original 0.0002, and no deviation note"]
    faithful = recipe_to_dict(load_recipe("seed002", ["train.precision=fp32"]))
    assert problems(ORIGINAL_002, faithful, named) == [
        "train.precision: named as a deviation but equal to the original's 'fp32'"]
    assert problems(ORIGINAL_002, faithful, named - {"train.precision"} | {"train.nonsense"}) == [
        "the header names train.nonsense, which the table does not hold"]


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_header_names_its_original_source(name):
    text = "\n".join(header(name))
    assert "Original:" in text and ("commit" in text)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_reference_recipes_build_their_exact_networks(name):
    model = build_model(load_recipe(name).model, 10)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_seed000_as_run_differs_from_seed000_only_in_per_image_augmentation():
    ours = recipe_to_dict(load_recipe("seed000"))
    as_run = recipe_to_dict(load_recipe("seed000-as-run"))
    diff = {f"{s}.{k}" for s in ours if isinstance(ours[s], dict) for k in ours[s] if ours[s][k] != as_run[s][k]}
    assert diff == {"augment.crop_padding", "augment.flip", "augment.policy", "augment.erasing_p"}
    assert as_run["augment"]["mixup_p"] > 0 and as_run["augment"]["cutmix_p"] > 0   # mixing did run
