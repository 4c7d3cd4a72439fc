"""One seed of a recipe variant, timed like `cifarkit bench` times a seed but without its warm-up
epoch, appended as one JSON line (accuracy, times, the overrides, hardware and versions).

For screening recipe changes on a CPU, where a bench's warm-up epoch is a sixth of a run: the
times are rough (no warm-up, no alternation with a baseline), the accuracy is one seed's. A
variant worth keeping is then measured with `ab_bench.py` over several seeds.

    python benchmarks/explore.py --recipe fast94 --name bs1000-7ep --seed 0 \
        --data-dir ../shared/datasets --jsonl runs.jsonl --set train.batch_size=1000 --set train.epochs=7
"""

from __future__ import annotations

import argparse
import sys
import time

from cifarkit.bench import time_one_seed
from cifarkit.config import load_recipe
from cifarkit.device import resolve_device
from cifarkit.exits import run_command
from cifarkit.experiment import Experiment
from cifarkit.fsio import append_jsonl, check_can_write
from cifarkit.runinfo import run_record
from cifarkit.train.distributed import join


def explore(recipe: str, overrides: list[str], seed: int, data_dir: str) -> dict:
    base = load_recipe(recipe, overrides)
    with join(resolve_device(base.device)) as world:
        experiment = Experiment(base, log=lambda m: None, world=world)
        experiment.check()
        experiment.load_data(data_dir)
        record = run_record(experiment.device)
        result = time_one_seed(experiment.with_recipe(base, log=lambda m: None).with_seed(seed))
    return {**result, "recipe": recipe, "overrides": overrides, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            **record}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast94")
    parser.add_argument("--name", required=True, help="a label for this variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--jsonl", required=True, help="file to append the result to")
    parser.add_argument("--set", action="append", default=[], help="recipe override (repeatable)")
    args = parser.parse_args()
    check_can_write(args.jsonl, append=True)      # now, not after minutes of training
    result = {"name": args.name, **explore(args.recipe, args.set, args.seed, args.data_dir)}
    append_jsonl(args.jsonl, result)
    print(f"{args.name} seed {args.seed}: accuracy {result['accuracy']:.4f}, "
          f"{result['train_seconds']:.1f} s training")
    return 0


if __name__ == "__main__":
    sys.exit(run_command("explore", main))
