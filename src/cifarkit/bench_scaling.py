"""`cifarkit bench --nproc N`: how a recipe's training speed scales with the number of processes
(GPUs) on this machine, as one JSON file.

It runs the same bench (`cifarkit bench`, the same seeds and warm-up) once as a plain single
process -- no torchrun, no DDP -- and then under torchrun with 1, 2, 4, ... N ranks (powers of two,
and N), each in fresh processes. The JSON holds every run's own bench result and, side by side,
the training images per second of each: `ddp_one_rank_vs_plain` is what DDP costs on one GPU,
`scaling_efficiency` the images/s of k ranks over k times those of one rank.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from cifarkit.errors import CifarkitError
from cifarkit.fsio import write_json
from cifarkit.runinfo import run_record
from cifarkit.train.interrupt import InterruptFlag, Interrupted
from cifarkit.train.launch import launch


def process_counts(nproc: int) -> list[int]:
    """1, 2, 4, ... up to nproc, and nproc itself."""
    counts, k = [], 1
    while k < nproc:
        counts.append(k)
        k *= 2
    return counts + [nproc]


def run_scaling(nproc: int, bench_args: list[str], *, out: Path, recipe_name: str, device,
                log: Callable[[str], None] = print) -> dict:
    """`bench_args`: the bench command line without --nproc and --out."""
    runs: dict[str, dict] = {}
    result = {}
    with tempfile.TemporaryDirectory(prefix="cifarkit-scaling-") as tmp:
        plans = [("plain", None)] + [(str(k), k) for k in process_counts(nproc)]
        for label, ranks in plans:
            path = Path(tmp) / f"{label}.json"
            args = ["bench", *bench_args, "--out", str(path)]
            log(f"scaling: {'a single process (no torchrun)' if ranks is None else f'{ranks} process(es) under torchrun'}")
            try:
                if ranks is None:
                    _run_plain([sys.executable, "-m", "cifarkit", *args])
                else:
                    launch(ranks, args)
            except Interrupted as stop:
                result = _summary(recipe_name, nproc, device, runs)
                write_json(out, {**result, "partial": True, "interrupted_at": label})
                raise Interrupted(stop.signum, f"scaling bench stopped at {label}; wrote {out} (marked partial)") from None
            runs[label] = json.loads(path.read_text(encoding="utf-8"))
    result = _summary(recipe_name, nproc, device, runs)
    write_json(out, result)
    rates = ", ".join(f"{row['processes']}: {row['train_images_per_second']:.0f}" for row in result["scaling"])
    log(f"training images/s by processes ({rates}); wrote {out}")
    return result


def _summary(recipe_name: str, nproc: int, device, runs: dict[str, dict]) -> dict:
    rates = {label: r.get("train_images_per_second") for label, r in runs.items()}
    one = rates.get("1")
    rows = []
    for label, r in runs.items():
        k = None if label == "plain" else int(label)
        rows.append({"processes": "plain" if k is None else k,
                     "launch": "single process, no torchrun" if k is None else "torchrun, DDP",
                     "train_images_per_second": rates[label],
                     "seconds_median": r["seconds"]["median"] if r.get("seconds") else None,
                     "accuracy_mean": r["accuracy"]["mean"] if r.get("accuracy") else None,
                     "scaling_efficiency": (rates[label] / (k * one) if k and one and rates[label] else None)})
    plain = rates.get("plain")
    return {"recipe": recipe_name, "nproc": nproc, "scaling": rows,
            "ddp_one_rank_vs_plain": one / plain if one and plain else None,
            "timing": "each row is a full `cifarkit bench` (same seeds, warm-up apart); images/s of the median "
                      "seed's training, global batch per step",
            "runs": runs, **run_record(device)}


def _run_plain(command: list[str]) -> None:
    """A child bench in its own session; SIGINT/SIGTERM here are passed on to it, once."""
    proc = subprocess.Popen(command, start_new_session=True)
    forwarded = None
    with InterruptFlag() as flag:
        while proc.poll() is None:
            if flag.signum is not None and forwarded is None:
                forwarded = flag.signum
                proc.send_signal(forwarded)
            time.sleep(0.1)
    if forwarded is not None:
        raise Interrupted(forwarded)
    if proc.returncode != 0:
        error = CifarkitError(f"the single-process bench exited with code {proc.returncode} (its error is above)")
        error.exit_code = proc.returncode if proc.returncode > 0 else 1
        raise error


__all__ = ["run_scaling", "process_counts"]
