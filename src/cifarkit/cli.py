"""The `cifarkit` command: parses arguments, resolves a recipe, calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cifarkit import __version__
from cifarkit.errors import CifarkitError

DEFAULT_RECIPE = "fast94"


def _recipe_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_RECIPE) -> None:
    p.add_argument("--recipe", "-r", default=default, help=f"built-in recipe name or YAML path (default: {default})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.epochs=5 (repeatable)")


def _resolve(args, overrides_extra: list[str] | None = None):
    from cifarkit.config import load_recipe
    overrides = list(args.overrides) + list(overrides_extra or [])
    return load_recipe(args.recipe, overrides)


def cmd_recipes(args) -> int:
    from cifarkit.config import builtin_recipe_names, load_recipe
    from cifarkit.models.registry import build_model, count_parameters
    rows = []
    for name in builtin_recipe_names():
        r = load_recipe(name)
        params = count_parameters(build_model(r.model, 100 if r.data.dataset == "cifar100" else 10))
        rows.append((name, r.model.arch, f"{params:,}", str(r.train.epochs), r.description.split("\n")[0]))
    widths = [max(len(row[i]) for row in rows + [("recipe", "model", "params", "epochs", "")]) for i in range(4)]
    print(f"{'recipe':<{widths[0]}}  {'model':<{widths[1]}}  {'params':>{widths[2]}}  {'epochs':>{widths[3]}}  description")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}  {row[4]}")
    return 0


def cmd_summary(args) -> int:
    from cifarkit.models.registry import build_model, check_budget, summarize
    if args.run and not args.recipe_given:
        args.recipe = str(Path(args.run) / "recipe.yaml")
    recipe = _resolve(args)
    model = build_model(recipe.model, 100 if recipe.data.dataset == "cifar100" else 10)
    info = summarize(model)
    print(info.table)
    print(f"recipe {recipe.name}: {info.total_params:,} parameters ({info.trainable_params:,} trainable), "
          f"{info.mult_adds / 1e6:,.1f} M multiply-adds per image")
    if args.run:
        summary_path = Path(args.run) / "summary.json"
        if not summary_path.is_file():
            raise CifarkitError(f"{args.run} has no summary.json; run `cifarkit evaluate {args.run}` first")
        s = json.loads(summary_path.read_text())
        print(f"run {args.run}: test accuracy {s['test_accuracy']:.4f} ({s['selected']}), "
              f"{s['accuracy_per_million_parameters']:.4f} accuracy per million parameters")
    check_budget(model, recipe.budget, recipe.allow_over_budget or args.allow_over_budget)
    print(f"within the budget of {recipe.budget:,} parameters")
    return 0


def cmd_train(args) -> int:
    from cifarkit.config import load_recipe
    from cifarkit.evaluate.html_report import write_report
    from cifarkit.evaluate.report import evaluate_run
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
        source = args.recipe if args.recipe_given else str(RunDir(run_dir).recipe_path)
        if not args.recipe_given and not RunDir(run_dir).exists():
            raise CifarkitError(f"{run_dir} is not a cifarkit run directory (no recipe.yaml)")
        recipe = load_recipe(source, list(args.overrides) + extra)
    else:
        recipe = _resolve(args, extra)
        run_dir = Path(args.out) if args.out else default_run_dir(recipe)
    train_run(recipe, run_dir, data_dir=args.data_dir, resume=bool(args.resume), force=args.force)
    if not args.no_eval:
        evaluate_run(run_dir, args.data_dir, device=args.device)
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
    run_benchmark(args.recipe, seeds=args.seeds, overrides=list(args.overrides) + extra,
                  data_dir=args.data_dir, out=args.out, first_seed=args.first_seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifarkit", description=__doc__.split(":")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"cifarkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("recipes", help="list the built-in recipes")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("summary", help="layer table, parameters, multiply-adds, budget check")
    _recipe_args(p)
    p.add_argument("--run", help="a run directory: also report accuracy per million parameters")
    p.add_argument("--allow-over-budget", action="store_true", help="do not fail when over the parameter budget")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a recipe into a run directory, then evaluate it")
    _recipe_args(p)
    p.add_argument("--data-dir", help="CIFAR archive or folder (default: $CIFARKIT_DATA, then ./data)")
    p.add_argument("--out", help="run directory (default: runs/<recipe>-s<seed>)")
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--force", action="store_true", help="resume even though the recipe changed")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test metrics, TTA, ensembles, plots and summary.json for a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--data-dir")
    p.add_argument("--tta", choices=["none", "flip", "flip_translate", "view8"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="one self-contained HTML page of one or more runs, with PNG and CSV files")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: the recipe values that differ)")
    p.add_argument("--out", "-o", default="report.html",
                   help="HTML file to write (default report.html); figures and CSVs go to <name>_files/ beside it")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", help="a submission CSV from the competition pickle, or labels for images")
    p.add_argument("source", help="run directory, weights .pt file, or export folder")
    p.add_argument("--input", "-i", nargs="+", required=True, help="cifar_test_nolabel.pkl, or PNG/JPEG files")
    p.add_argument("--output", "-o", default="submission.csv")
    p.add_argument("--weights", default="auto", choices=["auto", "final", "best", "ema", "swa", "ensemble"])
    p.add_argument("--tta", choices=["none", "flip", "flip_translate", "view8"])
    p.add_argument("--header", default="ID,Labels", help="CSV header (default ID,Labels)")
    p.add_argument("--self-normalize", action="store_true",
                   help="normalize the input set with its own channel statistics instead of the training set's")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print image predictions as JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write the model as safetensors + JSON architecture, or as ONNX")
    p.add_argument("run", help="run directory")
    p.add_argument("--weights", default="auto", choices=["auto", "final", "best", "ema", "swa"],
                   help="which weights (default auto: the one evaluate selected on the validation split)")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "onnx"],
                   help="safetensors (default; cifarkit predict loads it) or onnx (model.onnx: uint8 "
                        "(N, 32, 32, 3) images in, logits and probabilities out, normalization inside)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("download", help="fetch (HTTPS, MD5) and verify CIFAR-10/100; optionally extract it")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--data-dir", help="where to look and download (default: $CIFARKIT_DATA, then ./data)")
    p.add_argument("--extract", action="store_true", help="also unpack the archive (safely) next to it")
    p.add_argument("--no-verify", action="store_true", help="skip the CIFAR-10 content check")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("bench", help="train a recipe over several seeds; write accuracy and timing JSON")
    _recipe_args(p, default="fast94")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-dir")
    p.add_argument("--out", help="JSON path (default: benchmarks/results/<recipe>-<device>.json)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.recipe_given = any(a in ("--recipe", "-r") or a.startswith("--recipe=") for a in argv)
    try:
        return args.func(args)
    except CifarkitError as e:
        print(f"cifarkit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cifarkit: interrupted", file=sys.stderr)
        return 130
    except OSError as e:          # disk full, permissions, ...: files are written atomically, so nothing is torn
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"cifarkit: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("cifarkit: error: out of memory; lower train.batch_size or eval.batch_size", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
