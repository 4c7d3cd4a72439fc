"""Time a recipe against the same recipe at an earlier commit, on one machine, alternating seeds.

    python benchmarks/ab_bench.py --recipe fast94 --baseline 71143e1 --seeds 3 --device cpu \
        --data-dir ../shared/datasets --json benchmarks/results/fast94-ab-cpu.json

For each seed the baseline commit's `cifarkit bench` runs first and this tree's second (the next
seed alternates the order), each in its own process with one seed, so slow drift of a shared
machine falls on both sides alike. The baseline runs from a temporary git worktree of that commit.
The matrix-multiply yardstick (bf16; fp32 on a CPU without native bf16) is taken before the first
and after the last run. The JSON holds every per-seed number of both sides, their medians, the
ratio new / baseline, the new side's mean accuracy with a one-sided t-test against the recipe's
target, and the measured training FLOP/s against the yardstick.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from cifarkit.bench import matmul_gflops, yardstick_key  # noqa: E402
from cifarkit.exits import run_command  # noqa: E402
from cifarkit.fsio import check_can_write, write_json  # noqa: E402
from cifarkit.runinfo import run_record  # noqa: E402
from cifarkit.stats import describe, one_sided_p_value  # noqa: E402


def bench_once(src: Path, recipe: str, seed: int, args, out: Path) -> dict:
    """One seed of `cifarkit bench` from the tree at `src`; returns its JSON."""
    env = {**os.environ, "PYTHONPATH": str(src / "src")}
    command = [sys.executable, "-m", "cifarkit", "bench", "--recipe", recipe, "--seeds", "1", "--first-seed",
               str(seed), "--device", args.device, "--out", str(out)]
    if args.data_dir:          # absolute: each side runs in its own tree's directory
        command += ["--data-dir", str(Path(args.data_dir).resolve())]
    for override in args.set:
        command += ["--set", override]
    subprocess.run(command, env=env, check=True, cwd=src)
    return json.loads(out.read_text())


def summarize(runs: list[dict]) -> dict:
    """The per-seed runs of one side and their statistics."""
    per_seed = [r["runs"][0] for r in runs]
    return {"runs": per_seed, "seconds": describe([r["seconds"] for r in per_seed]),
            "train_seconds": describe([r["train_seconds"] for r in per_seed]),
            "accuracy": describe([r["accuracy"] for r in per_seed]),
            "warmup_seconds": [r["warmup_seconds"] for r in runs],
            "training_flops_per_second": [r.get("training_flops_per_second") for r in runs],
            "git_commit": runs[0]["git_commit"], "recipe_resolved": runs[0]["recipe_resolved"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast94")
    parser.add_argument("--baseline", required=True, help="the commit to compare against")
    parser.add_argument("--baseline-recipe", help="the recipe's name at that commit (default: --recipe)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir")
    parser.add_argument("--set", action="append", default=[], help="override for the new side only")
    parser.add_argument("--set-both", action="append", default=[], help="override for both sides")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    check_can_write(args.json)            # now, not after the minutes of timing
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline_tree = tmp / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                       check=True, capture_output=True)
        try:
            before = matmul_gflops(device)
            sides = {"baseline": [], "new": []}
            for i, seed in enumerate(range(args.first_seed, args.first_seed + args.seeds)):
                order = ["baseline", "new"] if i % 2 == 0 else ["new", "baseline"]
                for side in order:
                    src = baseline_tree if side == "baseline" else ROOT
                    recipe = (args.baseline_recipe or args.recipe) if side == "baseline" else args.recipe
                    saved_set = args.set_both + (args.set if side == "new" else [])
                    result = bench_once(src, recipe, seed, argparse.Namespace(**{**vars(args), "set": saved_set}),
                                        tmp / f"{side}-{seed}.json")
                    sides[side].append(result)
                    r = result["runs"][0]
                    print(f"{side} seed {seed}: {r['accuracy']:.4f} in {r['seconds']:.1f}s", flush=True)
            after = matmul_gflops(device)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                           capture_output=True)
    baseline, new = summarize(sides["baseline"]), summarize(sides["new"])
    target = sides["new"][0]["target_accuracy"]
    accs = [r["accuracy"] for r in new["runs"]]
    flops = statistics.median(f for f in new["training_flops_per_second"] if f)
    result = {
        "recipe": args.recipe, "baseline_commit": args.baseline, "device": str(device), "seeds": args.seeds,
        "order": "alternating: baseline first on even seeds, new first on odd seeds; one process per seed",
        "baseline": baseline, "new": new,
        "median_seconds_ratio_new_over_baseline": new["seconds"]["median"] / baseline["seconds"]["median"],
        "target_accuracy": target,
        "new_p_value_mean_above_target": one_sided_p_value(accs, target) if target is not None else None,
        yardstick_key(device): {"before": before, "after": after},
        "new_training_flops_per_second": flops,
        "new_training_flops_share_of_yardstick": flops / 1e9 / max(before, after),
        **run_record(device),
    }
    write_json(args.json, result)
    print(f"median {new['seconds']['median']:.1f}s vs {baseline['seconds']['median']:.1f}s: ratio "
          f"{result['median_seconds_ratio_new_over_baseline']:.3f}; new accuracy {new['accuracy']['mean']:.4f} "
          f"+- {new['accuracy']['std']:.4f}; wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_command("ab_bench", main))
