"""Selective TTA on a trained run: test accuracy and evaluation time for several `tta_fraction`s.

    python benchmarks/selective_tta.py runs/fast-s0 --fractions 1 0.5 0.25 0.1 \
        --json benchmarks/results/selective-tta-cpu.json

Evaluates the run's selected weights on the 10,000 test images with the run's TTA mode, once
per fraction (1 = every view for every image), plus the two-view `flip` mode for reference, and
writes accuracy and seconds per setting. This only compares evaluation settings of one finished
model; it selects nothing for that model's reported result.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cifarkit.bench import synchronize
from cifarkit.data.prepare import make_loader, prepare_data
from cifarkit.evaluate.loading import load_trained
from cifarkit.evaluate.metrics import accuracy
from cifarkit.evaluate.report import autocast_dtype
from cifarkit.evaluate.tta import predict_probs
from cifarkit.fsio import write_json
from cifarkit.runinfo import resolve_device, run_record


def measure(model, loader, labels, *, mode: str, fraction: float, recipe, device) -> dict:
    synchronize(device)
    start = time.perf_counter()
    probs = predict_probs(model, loader, mode=mode, device=device, autocast_dtype=autocast_dtype(recipe, device),
                          batch_size=recipe.eval.batch_size, fraction=fraction)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"mode": mode, "fraction": fraction, "accuracy": accuracy(probs.numpy(), labels), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    trained = load_trained(args.run, device=device)
    recipe = trained.recipe
    data = prepare_data(recipe.data, args.data_dir, log=lambda m: None)
    arrays = data.arrays
    loader = make_loader(arrays.test_images, arrays.test_labels, recipe, device, mean=data.mean, std=data.std,
                         train=False)
    model = trained.model
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    measure(model, loader, arrays.test_labels, mode="none", fraction=1.0, recipe=recipe, device=device)  # warm-up
    results = [measure(model, loader, arrays.test_labels, mode=recipe.eval.tta, fraction=f, recipe=recipe,
                       device=device) for f in args.fractions]
    results.append(measure(model, loader, arrays.test_labels, mode="flip", fraction=1.0, recipe=recipe,
                           device=device))
    for r in results:
        print(f"{r['mode']} fraction {r['fraction']:g}: accuracy {r['accuracy']:.4f} in {r['seconds']:.2f}s")
    if args.json:
        write_json(args.json, {"run": str(args.run), "weights": trained.source, "results": results,
                                **run_record(device)})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
