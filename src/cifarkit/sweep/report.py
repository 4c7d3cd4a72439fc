"""`cifarkit sweep --report STUDY`: the trials as a table (printed, and as CSV and JSON), the best
trial's recipe as a YAML that `cifarkit train --recipe` accepts, and Optuna's plots as PNG files
(optimization history, validation accuracy per epoch, parameter importances, parallel coordinates).

Everything comes from the study's storage (the trials keep their resolved recipe as a user
attribute), so a report can be made on any machine that reaches the database.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from cifarkit.config import dump_recipe, recipe_from_dict
from cifarkit.errors import CheckpointError
from cifarkit.fsio import write_json, write_text
from cifarkit.sweep.study import check_study_name, default_storage, open_storage, study_dir

COLUMNS = ["trial", "state", "val_acc", "params_count", "epochs_run", "seconds", "pruned_reason"]


def load_study(study_name: str, storage: str | None = None) -> optuna.Study:
    check_study_name(study_name)
    url = storage or default_storage(study_name)
    if storage is None and not (study_dir(study_name) / "study.db").is_file():
        raise CheckpointError(f"no study {study_name} here ({study_dir(study_name) / 'study.db'} does not exist); "
                              "give --storage URL for a study kept elsewhere")
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise CheckpointError(f"no study named {study_name} in {url}") from None


def trial_rows(study: optuna.Study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row = {"trial": t.number, "state": t.state.name.lower(), "val_acc": t.value,
               "params_count": attrs.get("params_count"), "epochs_run": attrs.get("epochs_run"),
               "seconds": None if seconds is None else round(seconds, 1), "pruned_reason": attrs.get("pruned_reason"),
               "retry_of": t.system_attrs.get("failed_trial")}
        row.update({f"param:{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


def write_sweep_report(study_name: str, storage: str | None = None, out: str | Path | None = None,
                       log: Callable[[str], None] = print) -> dict:
    study = load_study(study_name, storage)
    out = Path(out) if out else study_dir(study_name) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    params = sorted({k for r in rows for k in r if k.startswith("param:")})
    header = COLUMNS + ["retry_of"] + params
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "trials.csv", text.getvalue())
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: t.value) if complete else None
    result = {"study": study_name, "direction": "maximize", "objective": "best per-epoch validation accuracy",
              "counts": {s.name.lower(): sum(r["state"] == s.name.lower() for r in rows) for s in TrialState},
              "best": None, "trials": rows}
    if best is not None:
        result["best"] = {"trial": best.number, "val_acc": best.value, "params": best.params,
                          "params_count": best.user_attrs.get("params_count"), "recipe": "best.yaml",
                          "run_dir": best.user_attrs.get("run_dir")}
        write_text(out / "best.yaml", best_recipe_yaml(study_name, best))
    write_json(out / "trials.json", result)
    result["plots"] = write_plots(study, out, log)
    write_json(out / "trials.json", result)
    log(format_table(rows, params))
    if best is not None:
        log(f"best: trial {best.number}, val_acc {best.value:.4f}; its recipe: {out / 'best.yaml'}; test it once "
            f"with: cifarkit evaluate {best.user_attrs.get('run_dir', 'RUN')}")
    log(f"report: {out}")
    return result


def best_recipe_yaml(study_name: str, best: optuna.trial.FrozenTrial) -> str:
    data = dict(best.user_attrs["recipe"])
    data["name"] = f"{study_name}-best"
    data["description"] = f"sweep {study_name}, trial {best.number}: validation accuracy {best.value:.4f}"
    recipe = recipe_from_dict(data)          # what `cifarkit train --recipe` will accept
    params = "".join(f"#   {k}: {v}\n" for k, v in best.params.items())
    return (f"# The best trial ({best.number}) of sweep {study_name}: its resolved recipe, as trained.\n"
            f"# Validation accuracy {best.value:.4f}. Sampled:\n{params}" + dump_recipe(recipe))


PLOTS = {
    "history.png": "plot_optimization_history",
    "intermediate.png": "plot_intermediate_values",
    "importance.png": "plot_param_importances",
    "parallel.png": "plot_parallel_coordinate",
}

AXIS_LABELS = {"history.png": ("trial", "validation accuracy"),
               "intermediate.png": ("epoch", "validation accuracy")}


def write_plots(study: optuna.Study, out: Path, log: Callable[[str], None]) -> dict[str, str]:
    """Optuna's matplotlib plots as PNG files; a plot the study cannot have yet (importances need
    two finished trials that differ) is named with the reason instead."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm
    written = {}
    for name, func in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, func)(study)
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            if name in AXIS_LABELS:
                first.set_xlabel(AXIS_LABELS[name][0])
                first.set_ylabel(AXIS_LABELS[name][1])
            figure = first.get_figure()
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            figure.savefig(out / name, dpi=100)
            plt.close(figure)
            written[name] = "written"
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            written[name] = f"not written: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            log(f"{name} {written[name]}")
    return written


def format_table(rows: list[dict], params: list[str]) -> str:
    header = COLUMNS + params
    def cell(key, v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}" if key == "val_acc" else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)
    table = [[h.removeprefix("param:") for h in header]] + [[cell(h, r.get(h)) for h in header] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table)


__all__ = ["write_sweep_report", "load_study", "trial_rows", "best_recipe_yaml", "format_table"]
