"""The `cifarkit` command: parses arguments, resolves a recipe, calls the library. No logic of its own.

(About 380 lines: ten commands, each a short handler and its options, plus main's one mapping from
errors to exit codes. The parser is read as one table of the command line, so it stays in one
module; the help texts are in cli_help.py.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifarkit import __version__
from cifarkit.cli_help import DESCRIPTION, EXAMPLES
from cifarkit.errors import CifarkitError
from cifarkit.exits import run_command

DEFAULT_RECIPE = "fast94"


def _parser(sub, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=description, epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)


def _recipe_args(p: argparse.ArgumentParser, default_note: str = f"default: {DEFAULT_RECIPE}") -> None:
    p.add_argument("--recipe", "-r", default=None, help=f"built-in recipe name or YAML path ({default_note})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.epochs=5 (repeatable)")


def _device_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--device", default=default, choices=["auto", "cpu", "cuda"],
                   help="where to run (default: the recipe's device; auto = a GPU when there is one)")


def _load(recipe: str, overrides: list[str]):
    from cifarkit.config import load_recipe
    return load_recipe(recipe, overrides)


# -- commands ------------------------------------------------------------------------------------

def cmd_recipes(args) -> int:
    from cifarkit.config import builtin_recipe_names, dump_recipe
    from cifarkit.models.registry import build_model, count_parameters
    if args.action == "show":
        print(dump_recipe(_load(args.name, args.overrides)), end="")
        return 0
    rows = []
    for name in builtin_recipe_names():
        r = _load(name, [])
        params = count_parameters(build_model(r.model, r.data.num_classes))
        rows.append((name, r.model.arch, f"{params:,}", str(r.train.epochs), r.description.split("\n")[0]))
    widths = [max(len(row[i]) for row in rows + [("recipe", "model", "params", "epochs", "")]) for i in range(4)]
    print(f"{'recipe':<{widths[0]}}  {'model':<{widths[1]}}  {'params':>{widths[2]}}  {'epochs':>{widths[3]}}  description")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}  {row[4]}")
    return 0


def cmd_summary(args) -> int:
    from cifarkit.models.registry import build_model, check_budget, summarize
    from cifarkit.rundir import RunDir
    run = RunDir(args.run) if args.run else None
    source = args.recipe or (str(run.recipe_path) if run else DEFAULT_RECIPE)
    if run and not args.recipe and not run.exists():
        run.load_recipe()                            # the one clear error for a non-run directory
    recipe = _load(source, args.overrides)
    model = build_model(recipe.model, recipe.data.num_classes)
    info = summarize(model)
    print(info.table)
    print(f"recipe {recipe.name}: {info.total_params:,} parameters ({info.trainable_params:,} trainable), "
          f"{info.mult_adds / 1e6:,.1f} M multiply-adds per image")
    if run:
        s = run.read_summary()
        print(f"run {args.run}: test accuracy {s['test_accuracy']:.4f} ({s['selected']}), "
              f"{s['accuracy_per_million_parameters']:.4f} accuracy per million parameters")
    check_budget(model, recipe.budget, recipe.allow_over_budget or args.allow_over_budget)
    print(f"within the budget of {recipe.budget:,} parameters")
    return 0


def cmd_train(args) -> int:
    from cifarkit.rundir import RunDir
    from cifarkit.train.run import default_run_dir, train_run
    extra = []
    if args.seed is not None:
        extra.append(f"seed={args.seed}")
    if args.epochs is not None:
        extra.append(f"train.epochs={args.epochs}")
    if args.device is not None:
        extra.append(f"device={args.device}")
    if args.resume:
        run_dir = Path(args.resume)
        if not args.recipe:
            RunDir(run_dir).load_recipe()            # the one clear error for a non-run directory
        recipe = _load(args.recipe or str(RunDir(run_dir).recipe_path), args.overrides + extra)
    else:
        recipe = _load(args.recipe or DEFAULT_RECIPE, args.overrides + extra)
        run_dir = Path(args.out) if args.out else default_run_dir(recipe)
    if args.nproc is not None:       # the recipe is checked once, here; then torchrun starts the ranks
        from cifarkit.device import resolve_device
        from cifarkit.train.launch import check_nproc, launch, without_nproc
        check_nproc(resolve_device(recipe.device), args.nproc)
        if not args.resume:
            RunDir(run_dir).check_new()
        return launch(args.nproc, without_nproc(args.argv))
    train_run(recipe, run_dir, data_dir=args.data_dir, resume=bool(args.resume), force=args.force,
              evaluate=not args.no_eval)
    from cifarkit.train.distributed import is_main_process
    if not is_main_process():        # under torchrun: rank 0 reports for the run
        return 0
    from cifarkit.evaluate.html_report import write_report
    write_report([run_dir], Path(run_dir) / "report.html")
    print(f"run directory: {run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from cifarkit.evaluate.report import evaluate_run
    evaluate_run(args.run, args.data_dir, tta=args.tta, device=args.device)
    return 0


def cmd_report(args) -> int:
    from cifarkit.evaluate.html_report import write_report
    write_report(args.runs, args.out)
    return 0


def cmd_predict(args) -> int:
    from cifarkit.evaluate.predict import predict_images, predict_submission
    header = tuple(h.strip() for h in args.header.split(","))
    if len(header) != 2 or not all(header):
        raise CifarkitError(f"--header must be two comma-separated names like ID,Labels; got '{args.header}'")
    inputs = [Path(p) for p in args.input]
    pickles = [p for p in inputs if p.suffix.lower() in (".pkl", ".pickle")]
    if pickles:
        if len(inputs) != 1:
            raise CifarkitError("give one pickle file at a time (or only image files)")
        predict_submission(args.source, pickles[0], args.output, weights=args.weights, tta=args.tta,
                           device=args.device, header=header, self_normalize=args.self_normalize)
        return 0
    results = predict_images(args.source, inputs, weights=args.weights, tta=args.tta, device=args.device,
                             top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            tops = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
            print(f"{r['path']}: {r['class']} ({tops})" + ("  [resized to 32x32]" if r["resized"] else ""))
    return 0


def cmd_export(args) -> int:
    from cifarkit.export import export_run
    out = export_run(args.run, args.out, weights=args.weights, format=args.format)
    print(f"exported to {out}" + (" (model.onnx)" if args.format == "onnx" else ""))
    return 0


def cmd_download(args) -> int:
    from cifarkit.data.cifar import fetch_cifar
    path = fetch_cifar(args.dataset, args.data_dir, extract=args.extract, verify=not args.no_verify)
    print(f"ready: pass --data-dir {path}")
    return 0


def cmd_bench(args) -> int:
    from cifarkit.bench import run_benchmark
    extra = [f"device={args.device}"] if args.device else []
    if args.nproc is not None:
        from cifarkit.bench_scaling import run_scaling
        from cifarkit.device import resolve_device
        from cifarkit.train.launch import check_nproc, without_nproc, without_option
        recipe = _load(args.recipe or DEFAULT_RECIPE, args.overrides + extra)
        device = resolve_device(recipe.device)
        check_nproc(device, args.nproc)
        out = Path(args.out) if args.out else Path("benchmarks") / "results" / f"{recipe.name}-{device.type}-scaling.json"
        run_scaling(args.nproc, without_option(without_nproc(args.argv), "--out")[1:], out=out, recipe_name=recipe.name,
                    device=device)
        return 0
    run_benchmark(args.recipe or DEFAULT_RECIPE, seeds=args.seeds, overrides=args.overrides + extra,
                  data_dir=args.data_dir, out=args.out, first_seed=args.first_seed)
    return 0


def cmd_sweep(args) -> int:
    if args.report:
        from cifarkit.sweep.report import write_sweep_report
        write_sweep_report(args.report, args.storage, args.out)
        return 0
    if args.space is None or args.trials is None:
        args.parser.error("a sweep needs --space and --trials (or --report STUDY)")
    from cifarkit.sweep.study import run_sweep
    extra = [f"device={args.device}"] if args.device else []
    run_sweep(args.recipe or DEFAULT_RECIPE, args.space, args.trials, overrides=args.overrides + extra,
              storage=args.storage, study_name=args.study, data_dir=args.data_dir, device=args.device,
              heartbeat=args.heartbeat, worker=args.worker)
    return 0


# -- the parser ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarkit", description=DESCRIPTION, epilog=EXAMPLES["main"],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"cifarkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _parser(sub, "recipes", "list the built-in recipes, or show one as YAML",
                "List the built-in recipes (model, parameters, epochs), or print one recipe fully resolved "
                "(its base recipes merged, --set applied) as YAML that `cifarkit train --recipe FILE` accepts.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="the built-in recipes (the default)", allow_abbrev=False)
    show = actions.add_parser("show", help="one recipe, resolved, as YAML", allow_abbrev=False)
    show.add_argument("name", help="built-in recipe name or YAML path")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a recipe value before printing (repeatable)")
    p.set_defaults(func=cmd_recipes, action="list")

    p = _parser(sub, "summary", "layer table, parameters, multiply-adds, budget check",
                "Print a recipe's model as a layer table with its parameter count and multiply-adds, and "
                "check it against the parameter budget (non-zero exit when it is over).")
    _recipe_args(p, f"default: the run's recipe with --run, else {DEFAULT_RECIPE}")
    p.add_argument("--run", help="a run directory: its recipe, and its accuracy per million parameters")
    p.add_argument("--allow-over-budget", action="store_true", help="do not fail when over the parameter budget")
    p.set_defaults(func=cmd_summary)

    p = _parser(sub, "train", "train a recipe into a run directory, then evaluate it",
                "Train a recipe into a run directory (recipe.yaml, run.json, metrics.jsonl, checkpoints, "
                "TensorBoard logs), then evaluate it on the test set. SIGINT/SIGTERM write a checkpoint "
                "and exit 130/143; --resume continues from it with exactly the same result.")
    _recipe_args(p, f"default: {DEFAULT_RECIPE}, or the run's recipe with --resume")
    p.add_argument("--data-dir", help="CIFAR archive or folder (default: $CIFARKIT_DATA, then ./data, then download)")
    p.add_argument("--out", help="run directory (default: runs/<recipe>-s<seed>)")
    p.add_argument("--seed", type=int, help="the seed of everything random (default: the recipe's, 0)")
    p.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
    _device_arg(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="resume even though the recipe changed")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after training")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train one run with N processes on this machine (DDP, one GPU each; torchrun starts them)")
    p.set_defaults(func=cmd_train)

    p = _parser(sub, "evaluate", "test metrics, TTA, ensembles, plots and summary.json for a run",
                "Score every trained model of a run (final, best, EMA, SWA, the recipe's ensemble), select one "
                "on the validation split, and report all of them on the test set, read once: summary.json "
                "and plots/ in the run directory.")
    p.add_argument("run", help="run directory")
    p.add_argument("--data-dir", help="CIFAR archive or folder (default: $CIFARKIT_DATA, then ./data)")
    p.add_argument("--tta", choices=["none", "flip", "flip_translate", "view8"],
                   help="test-time augmentation (default: the recipe's)")
    _device_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = _parser(sub, "report", "one self-contained HTML page of one or more runs, with PNG and CSV files",
                "Write one HTML file (figures embedded, no network needed) with each run's recipe (for several "
                "runs, the values that differ), training curves, every model's validation and test accuracy, the "
                "selected model's confusion matrix, per-class precision/recall/F1/AUC, ROC curves and most "
                "confidently wrong test images, hardware and versions; every figure also as PNG and CSV.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: the recipe values that differ)")
    p.add_argument("--out", "-o", default="report.html",
                   help="HTML file to write (default report.html); figures and CSVs go to <name>_files/ beside it")
    p.set_defaults(func=cmd_report)

    p = _parser(sub, "predict", "a submission CSV from the competition pickle, or labels for images",
                "Predict with a trained run, a weights file or an export: a submission CSV (one row per id, "
                "sorted) from the competition's unlabeled pickle, or the top classes of image files.")
    p.add_argument("source", help="run directory, weights .pt file, or export folder")
    p.add_argument("--input", "-i", nargs="+", required=True, help="cifar_test_nolabel.pkl, or PNG/JPEG files")
    p.add_argument("--output", "-o", default="submission.csv", help="the CSV to write (default: submission.csv)")
    p.add_argument("--weights", default="auto", choices=["auto", "final", "best", "ema", "swa", "ensemble"],
                   help="which model of a run (default auto: the one evaluate selected, ensemble included)")
    p.add_argument("--tta", choices=["none", "flip", "flip_translate", "view8"],
                   help="test-time augmentation (default: the recipe's)")
    p.add_argument("--header", default="ID,Labels", help="CSV header (default ID,Labels)")
    p.add_argument("--self-normalize", action="store_true",
                   help="normalize the input set with its own channel statistics instead of the training set's")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image file (default 3)")
    p.add_argument("--json", action="store_true", help="print image predictions as JSON")
    _device_arg(p, default="auto")
    p.set_defaults(func=cmd_predict)

    p = _parser(sub, "export", "write the model as safetensors + JSON architecture, or as ONNX",
                "Write one trained model as model.safetensors (no pickle) plus model.json (architecture, "
                "normalization, classes), loadable by `cifarkit predict EXPORT_DIR`, or as model.onnx for "
                "other runtimes (uint8 (N, 32, 32, 3) images in, normalization inside the graph).")
    p.add_argument("run", help="run directory")
    p.add_argument("--weights", default="auto", choices=["auto", "final", "best", "ema", "swa"],
                   help="which model (default auto: the one evaluate selected; an ensemble is refused)")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "onnx"],
                   help="safetensors (default; cifarkit predict loads it) or onnx (model.onnx: uint8 "
                        "(N, 32, 32, 3) images in, logits and probabilities out, normalization inside)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    p.set_defaults(func=cmd_export)

    p = _parser(sub, "download", "fetch (HTTPS, MD5) and verify CIFAR-10/100; optionally extract it",
                "Make sure a verified local copy of the dataset exists: download the official archive over "
                "HTTPS when none is found (MD5-checked), check CIFAR-10 by content, and optionally unpack it.")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"], help="which dataset (default cifar10)")
    p.add_argument("--data-dir", help="where to look and download (default: $CIFARKIT_DATA, then ./data)")
    p.add_argument("--extract", action="store_true", help="also unpack the archive (safely) next to it")
    p.add_argument("--no-verify", action="store_true", help="skip the CIFAR-10 content check")
    p.set_defaults(func=cmd_download)

    p = _parser(sub, "bench", "train a recipe over several seeds; write accuracy and timing JSON",
                "Train and evaluate a recipe for several seeds with the data already on the device, timing "
                "training plus the final evaluation (warm-up reported separately), and write accuracy mean, "
                "std and p-value against the recipe's target, times, hardware and versions as JSON.")
    _recipe_args(p)
    p.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    _device_arg(p)
    p.add_argument("--data-dir", help="CIFAR archive or folder (default: $CIFARKIT_DATA, then ./data)")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/<recipe>-<device>.json)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="time the recipe as one process and on 1, 2, 4, ... N processes (GPUs; torchrun), "
                        "images/s side by side in <recipe>-<device>-scaling.json")
    p.set_defaults(func=cmd_bench)

    p = _parser(sub, "sweep", "search recipe values with Optuna under the parameter budget; --report a study",
                "Sample recipe values from SPACE.yaml with Optuna (TPE or random), train each trial into "
                "runs/<study>/trial-<n>/ and maximize its validation accuracy (the test set is never read); models "
                "over the budget and weak trials are pruned. Any number of workers may share a study through "
                "--storage. --report STUDY writes the trials table, the best recipe as YAML and plots.")
    _recipe_args(p)
    p.add_argument("--space", help="SPACE.yaml: the values to sample, sampler, pruner, trial settings")
    p.add_argument("--trials", type=int, help="run until the study has this many finished (complete or pruned) trials")
    p.add_argument("--study", help="study name (default: <recipe>-<space file name>); trials go to runs/<study>/")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///runs/<study>/study.db); "
                                     "postgresql://... for workers on several machines")
    p.add_argument("--data-dir", help="CIFAR archive or folder (default: $CIFARKIT_DATA, then ./data)")
    _device_arg(p)
    p.add_argument("--worker", type=int, default=0, help="this worker's index: added to the sampler's seed (default 0)")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a worker's signs of life; a trial silent for two is failed and re-queued")
    p.add_argument("--report", metavar="STUDY", help="write the report of STUDY instead of running trials")
    p.add_argument("--out", help="with --report: output folder (default: runs/<study>/report)")
    p.set_defaults(func=cmd_sweep, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)   # `cifarkit train > log` can be followed live
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    return run_command("cifarkit", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
