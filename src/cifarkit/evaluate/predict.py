"""`cifarkit predict`: labels for the competition's unlabeled pickle (a submission CSV) or for image files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from cifarkit.data.custom_test import load_custom_test, write_submission
from cifarkit.data.images import load_image
from cifarkit.data.loader import channel_stats, normalized_batches
from cifarkit.device import inference_precision, resolve_device
from cifarkit.evaluate.inference import infer
from cifarkit.evaluate.loading import TrainedModel, load_models
from cifarkit.fsio import check_can_write
from cifarkit.train.checkpoint_schema import check_finite_logits


def predict_array(members: list[TrainedModel], images: np.ndarray, *, tta: str | None, device,
                  self_normalize: bool = False) -> np.ndarray:
    """Class probabilities (N, C) for uint8 images (N, 3, 32, 32), averaged over the members (an
    ensemble), each with its own test-time augmentation unless `tta` says otherwise."""
    own_stats = channel_stats(images) if self_normalize else None   # 002's answer to a shifted test set
    probs = []
    for m in members:
        mean, std = own_stats or (m.mean, m.std)
        batches = normalized_batches(images, mean=mean, std=std, batch_size=m.recipe.eval.batch_size,
                                     device=device, channels_last=m.recipe.train.channels_last)
        member = infer(m.model, batches, mode=tta or m.recipe.eval.tta, device=device,
                       precision=inference_precision(m.recipe.train.precision, device),
                       fraction=m.recipe.eval.tta_fraction, stats=(mean, std))
        check_finite_logits(member, m.source)      # NaN logits give NaN probabilities: refuse, never guess
        probs.append(member.numpy())
    return np.mean(probs, axis=0)


def predict_submission(source, input_path, output_path, *, weights="auto", tta=None, device="auto",
                       header=("ID", "Labels"), self_normalize=False, log: Callable[[str], None] = print) -> dict:
    device = resolve_device(device)
    images, ids = load_custom_test(input_path)          # validated before any model is loaded
    check_can_write(output_path)
    members = load_models(source, weights, device)
    probs = predict_array(members, images, tta=tta, device=device, self_normalize=self_normalize)
    labels = probs.argmax(1)
    write_submission(output_path, ids, labels, header=tuple(header), num_classes=probs.shape[1])
    counts = np.bincount(labels, minlength=probs.shape[1]).tolist()
    log(f"wrote {output_path}: {len(ids)} predictions from {', '.join(m.source for m in members)}; "
        f"per-class counts {counts}")
    return {"rows": len(ids), "class_counts": counts}


def predict_images(source, paths: list[str | Path], *, weights="auto", tta=None, device="auto",
                   top_k: int = 3) -> list[dict]:
    device = resolve_device(device)
    loaded = [load_image(p) for p in paths]            # every file checked before any model work
    members = load_models(source, weights, device)
    images = np.stack([img for img, _ in loaded])
    probs = predict_array(members, images, tta=tta, device=device)
    classes = members[0].classes or [str(i) for i in range(probs.shape[1])]
    results = []
    for path, (_, resized), p in zip(paths, loaded, probs):
        order = np.argsort(-p)[:top_k]
        results.append({"path": str(path), "label": int(order[0]), "class": classes[order[0]], "resized": resized,
                        "top": [{"class": classes[i], "label": int(i), "probability": float(p[i])} for i in order]})
    return results


