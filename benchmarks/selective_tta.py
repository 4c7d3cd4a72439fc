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
import sys
import time
from pathlib import Path

from cifarkit.device import synchronize
from cifarkit.evaluate.loading import load_trained
from cifarkit.evaluate.metrics import accuracy
from cifarkit.exits import run_command
from cifarkit.experiment import Experiment
from cifarkit.fsio import check_can_write, write_json
from cifarkit.runinfo import run_record


def measure(experiment: Experiment, model, *, mode: str, fraction: float) -> dict:
    device = experiment.device
    synchronize(device)
    start = time.perf_counter()
    probs = experiment.predict(model, "test", tta=mode, fraction=fraction)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"mode": mode, "fraction": fraction, "accuracy": accuracy(probs.numpy(), experiment.data.arrays.test_labels),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.json:
        check_can_write(args.json)        # now, not after the minutes of timing
    experiment = Experiment(load_trained(args.run).recipe, device=args.device, log=lambda m: None)
    trained = load_trained(args.run, device=experiment.device)
    experiment.load_data(args.data_dir)
    recipe, model = trained.recipe, trained.model
    measure(experiment, model, mode="none", fraction=1.0)  # warm-up
    results = [measure(experiment, model, mode=recipe.eval.tta, fraction=f) for f in args.fractions]
    results.append(measure(experiment, model, mode="flip", fraction=1.0))
    for r in results:
        print(f"{r['mode']} fraction {r['fraction']:g}: accuracy {r['accuracy']:.4f} in {r['seconds']:.2f}s")
    if args.json:
        write_json(args.json, {"run": str(args.run), "weights": trained.source, "results": results,
                                **run_record(experiment.device)})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_command("selective_tta", main))
