"""Every GPU measurement cifarkit lacks, in one command that fits a time budget.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --data-dir /root/data --out DIR --budget-s 540

After checking the data by content, runs in order, each step a subprocess with a timeout whose JSON
lands in DIR as soon as it ends: 1. `pytest -m cuda`; 2. `cifarkit bench` of fast94 (25 seeds),
fast95 (5), fast96 (1); 3. benchmarks/throughput.py for seed002 and seed004 at batch 128 and 512;
4. as time allows, `cifarkit train --recipe seed002` at full length. Durations are estimated from
FLOPs and the GPU's published bf16 peak; the plan is printed first, then seeds are reduced and steps
skipped until it fits. DIR/status.json is rewritten before and after every step (the plan, what
ran, what was skipped and why, headline results against the targets), so a run cut off anywhere
still says what it did; a step stopped by its timeout keeps what its log shows (DIR/<step>.log).
`--dry-run`: the same steps and files at tiny sizes (1 seed, 1 epoch, 64 images, small networks).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]     # cifarkit is not installed on GPU machines

try:
    from cifarkit.config import load_recipe
    from cifarkit.device import resolve_device
    from cifarkit.errors import CifarkitError
    from cifarkit.fsio import read_jsonl, write_json
    from cifarkit.runinfo import hardware, versions
    from cifarkit.stats import describe
    from gpu_plan import (ASSUMED_UTILISATION, COMPILE_FOR, COMPILE_S, PIECE_S, START_S, Speed, Step, fit_plan,
                          make_plan, peak_flops, skip)
except ImportError as e:        # a machine without cifarkit's dependencies: say which, in one line
    sys.exit(f"gpu_check: error: {e}; cifarkit needs torch, torchvision, numpy, pyyaml, pillow and matplotlib")

# Targets of the project's GPU issue; seed002's accuracy as published for the reference system.
TIME_TARGET_S = {"fast94": 1.8, "fast95": 5.0, "fast96": 60.0}
AUGMENT_SHARE_TARGET, SEED002_PUBLISHED, BUDGET_PARAMS = 0.10, 0.9556, 5_000_000
STEPS = ("pytest-cuda", "bench-fast94", "bench-fast95", "bench-fast96", "throughput", "train-seed002")


# --- running and reading the results -------------------------------------------------------------

def command(step: Step, out: Path) -> list[str]:
    py, json_out = sys.executable, str(out / f"{step.name}.json")
    return {"pytest": [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                       *sorted(map(str, (ROOT / "tests").glob("test_cuda_*.py")))],
            "bench": [py, "-m", "cifarkit", "bench", "--seeds", str(step.seeds), "--out", json_out, *step.args],
            "throughput": [py, str(ROOT / "benchmarks" / "throughput.py"), *step.args, "--json", json_out],
            "train": [py, "-m", "cifarkit", "train", *step.args]}[step.kind]


def run_logged(cmd: list[str], log_path: Path, timeout: float, env: dict) -> int | None:
    """Run `cmd` from the repository root with its output in `log_path`; the exit status, or None
    when it ran past `timeout` and was stopped (SIGTERM: cifarkit ends its step; SIGKILL 20 s later)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
                    try:
                        proc.wait(timeout=grace)
                    except subprocess.TimeoutExpired:
                        pass


SEED_LINE = re.compile(r"^seed (\d+): accuracy ([\d.]+) in ([\d.]+)s \(train ([\d.]+)s, eval ([\d.]+)s\)", re.M)
THROUGHPUT_LINE = re.compile(r"^(\S+) batch (\d+): (\d+) images/s, batch preparation ([\d.]+)% of step time", re.M)


def summarize_pytest(step: Step, path: Path, log: str, models: dict) -> dict:
    counts = re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)", log.splitlines()[-1]
                        if log.strip() else "")
    result = {**{kind: int(n) for n, kind in counts}, "failed": re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.M),
              "returncode": step.returncode}
    write_json(path, result)
    return result


def summarize_bench(step: Step, path: Path, log: str, models: dict) -> dict:
    recipe = step.args[1]
    if not path.exists():                                         # cut off: what its log shows
        keys = ("seed", "accuracy", "seconds", "train_seconds", "eval_seconds")
        runs = [dict(zip(keys, (int(m[0]), *map(float, m[1:])))) for m in SEED_LINE.findall(log)]
        write_json(path, {"recipe": recipe, "complete": False, "runs": runs})
    data = json.loads(path.read_text())
    acc, secs = describe([r["accuracy"] for r in data["runs"]]), describe([r["seconds"] for r in data["runs"]])
    return {"seeds": acc["n"], "accuracy_mean": acc["mean"], "accuracy_std": acc["std"], "median_s": secs["median"],
            "mean_s": secs["mean"], "std_s": secs["std"], "warmup_s": data.get("warmup_seconds"),
            "target_s": TIME_TARGET_S[recipe], "meets_time_target": secs["median"] <= TIME_TARGET_S[recipe]
            if acc["n"] else None, "target_accuracy": data.get("target_accuracy"),
            "p_value_mean_above_target": data.get("p_value_mean_above_target"), "parameters": models[recipe]["params"],
            "under_5M_parameters": models[recipe]["params"] < BUDGET_PARAMS,
            "recompiles": log.count("Recompiling function"), "complete": data.get("complete", True)}


def summarize_throughput(step: Step, path: Path, log: str, models: dict) -> dict:
    if not path.exists():                                         # cut off: what its log shows
        write_json(path, {"complete": False, "results": [
            {"recipe": r, "batch_size": int(b), "images_per_second": float(ips),
             "batch_preparation_share": float(p) / 100} for r, b, ips, p in THROUGHPUT_LINE.findall(log)]})
    return {f"{Path(r['recipe']).stem} batch {r['batch_size']}": {
        "images_per_second": r["images_per_second"], "batch_preparation_share": r["batch_preparation_share"],
        "under_10_percent": r["batch_preparation_share"] < AUGMENT_SHARE_TARGET}
        for r in json.loads(path.read_text())["results"]}


def summarize_train(step: Step, path: Path, log: str, models: dict) -> dict:
    run = Path(step.args[step.args.index("--out") + 1])
    keep = path.with_suffix("")                              # the run's small files come along, not its weights
    keep.mkdir(exist_ok=True)
    for name in ("recipe.yaml", "run.json", "metrics.jsonl", "summary.json"):
        if (run / name).exists():
            shutil.copy2(run / name, keep / name)
    summary = json.loads((keep / "summary.json").read_text()) if (keep / "summary.json").exists() else {}
    accuracy = summary.get("test_accuracy")
    result = {"epochs_done": len(read_jsonl(keep / "metrics.jsonl")) if (keep / "metrics.jsonl").exists() else 0,
              "test_accuracy": accuracy, "published_accuracy": SEED002_PUBLISHED, "complete": accuracy is not None,
              "difference": None if accuracy is None else accuracy - SEED002_PUBLISHED, "run_dir": str(run)}
    write_json(path, result)
    return result


SUMMARIZE = {"pytest": summarize_pytest, "bench": summarize_bench, "throughput": summarize_throughput,
             "train": summarize_train}


class Stopped(Exception):
    """SIGTERM or SIGINT reached this script."""


def run_plan(steps: list[Step], deadline: float, out: Path, models: dict, status: dict, save) -> str:
    """Run the planned steps in order before `deadline` (time.monotonic()); returns the final state."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}

    def stopped(signum, frame):
        raise Stopped(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopped)
    try:
        for step in steps:
            left = deadline - time.monotonic()
            if step.status == "planned" and step.seeds and step.estimate_s > left:   # earlier steps ran long
                step.seeds = max(min(2, step.full_seeds), int((left - step.fixed_s) // step.per_seed_s))
                step.note = f"{step.seeds} of {step.full_seeds} seeds: earlier steps took longer than estimated"
            if step.status == "planned" and step.estimate_s > left:
                skip(step, f"estimated {step.estimate_s:.0f} s, {left:.0f} s of the budget left")
            if step.status != "planned":
                continue
            step.status, started = "running", time.monotonic()
            save("running")
            print(f"{step.name}: running (~{step.estimate_s:.0f} s), log in {out / step.name}.log", flush=True)
            compiled = {"TORCH_LOGS": "recompiles"} if "train.compile=true" in step.args else {}
            step.returncode = run_logged(command(step, out), out / f"{step.name}.log",
                                         min(left, max(2 * step.estimate_s, step.estimate_s + 60)), {**env, **compiled})
            step.seconds = round(time.monotonic() - started, 1)
            step.status = {None: "timed out", 0: "done"}.get(step.returncode, "failed")
            try:
                path, log = out / f"{step.name}.json", (out / f"{step.name}.log").read_text()
                status["results"][step.name] = SUMMARIZE[step.kind](step, path, log, models)
            except (OSError, ValueError, KeyError) as e:              # it died before writing anything
                status["results"][step.name] = {"error": f"nothing to read: {e}"}
            print(f"{step.name}: {step.status} in {step.seconds:.0f} s: {status['results'][step.name]}", flush=True)
            save()
    except Stopped as e:
        for step in steps:
            step.status = "interrupted" if step.status == "running" else step.status
        return f"stopped by signal {e.args[0]}"
    return "done"


def check_data(data_dir: Path, verify: bool) -> dict:
    """Read the data once; with `verify`, compare its pixels and labels with official CIFAR-10 (SHA-256)."""
    from cifarkit.data.cifar import load_cifar
    started = time.monotonic()
    arrays = load_cifar("cifar10", data_dir, download=False, verify=verify, log=lambda m: None)
    return {"source": arrays.source, "train": len(arrays.train_labels), "test": len(arrays.test_labels),
            "content_verified": verify, "seconds": round(time.monotonic() - started, 1),
            "note": "official CIFAR-10 pixels and labels (SHA-256)" if verify else "synthetic data "
            "(--unverified-data): format checked, content NOT verified; steps run with data.verify=false"}


def measure_models() -> dict:
    """Forward FLOPs per image and parameters of each recipe's network, counted on the CPU."""
    from cifarkit.models.registry import build_model, count_parameters, flops_per_image
    models = {name: build_model(load_recipe(name).model, 10) for name in ("fast94", "fast95", "fast96", "seed002",
                                                                          "seed004")}
    return {name: {"flops": flops_per_image(m), "params": count_parameters(m)} for name, m in models.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="CIFAR-10 archive or folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON files and logs")
    parser.add_argument("--budget-s", type=float, default=540.0, help="seconds for everything (default 540)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, the same steps and files")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs",
                        help="where seed002's run with its weights goes (default runs/; DIR gets its small files)")
    parser.add_argument("--only", nargs="+", metavar="STEP", choices=STEPS,
                        help=f"run only these steps (of {', '.join(STEPS)}), e.g. seed002 in a later GPU window")
    parser.add_argument("--unverified-data", dest="verified", action="store_false",
                        help="with --dry-run: synthetic data, its format checked but not its content")
    args = parser.parse_args(argv)
    if not args.verified and not args.dry_run:
        parser.error("--unverified-data is for dry runs on synthetic data; a real run checks the data by content")
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    t0, args.out, args.data_dir, args.runs_dir = (time.monotonic(), args.out.resolve(), args.data_dir.resolve(),
                                                  args.runs_dir.resolve())
    out, steps = args.out, []
    status = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": args.budget_s, "device": args.device,
              "dry_run": args.dry_run, "plan": [], "results": {}}

    def save(state: str | None = None) -> None:
        status.update(state=state or status["state"], elapsed_s=round(time.monotonic() - t0, 1),
                      plan=[{**asdict(s), "estimate_s": round(s.estimate_s, 1)} for s in steps])
        write_json(out / "status.json", status)

    try:
        out.mkdir(parents=True, exist_ok=True)
        device = resolve_device(args.device)
        status["data_check"] = check_data(args.data_dir, args.verified)
    except (CifarkitError, OSError) as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        if out.is_dir():
            status["data_check"] = {"error": str(e)}
            save("stopped: the device or data check failed; nothing ran")
        return 2
    models = measure_models()
    peak, source = peak_flops(device)
    speed = Speed(peak * ASSUMED_UTILISATION, PIECE_S[device.type], status["data_check"]["seconds"])
    modules = {m: importlib.util.find_spec(m) is not None for m in ("pytest", "matplotlib", "safetensors", "torchinfo")}
    status.update(environment={"versions": versions(), "hardware": hardware(device), "modules": modules},
                  assumptions={"peak_flops": peak, "peak_source": source, "utilisation": ASSUMED_UTILISATION,
                               "piece_s": speed.piece_s, "start_s": START_S, "compile_s": COMPILE_S,
                               "compile_for": [r for r in COMPILE_FOR if device.type == "cuda"]})
    counts = {k: status["data_check"][k] for k in ("train", "test")}
    if not all(modules.values()):
        print(f"gpu_check: not installed here: {', '.join(m for m, found in modules.items() if not found)}")
    steps.extend(make_plan(args, models, counts, speed))
    for step in steps:
        if args.only and step.name not in args.only:
            skip(step, "not asked for (--only)")
    if not modules["pytest"] and steps[0].status == "planned":
        skip(steps[0], "pytest is not installed here")
    fit_plan(steps, args.budget_s - (time.monotonic() - t0))
    print(f"plan for {args.budget_s:.0f} s on {device} ({source}, x{ASSUMED_UTILISATION} assumed):")
    for i, s in enumerate(steps, 1):
        print(f"  {i}. {s.name:<14} ~{s.estimate_s:6.0f} s  {s.status}" + (f": {s.note}" if s.note else ""))
    save("planned")
    state = run_plan(steps, t0 + args.budget_s, out, models, status, save)
    status["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save(state)
    print(f"gpu_check: {state} in {time.monotonic() - t0:.0f} s; see {out / 'status.json'}")
    return 0 if state == "done" else 130


if __name__ == "__main__":
    sys.exit(main())
