"""`cifarkit report`: one self-contained HTML page about one or more runs.

The page needs nothing but itself: figures are embedded as base64 PNG data URIs, the style is
inline, there is no script and no address outside the file. Next to it, in `<name>_files/`, every
figure is also a PNG file and every figure and table is a CSV file, for a course report or a
spreadsheet. All files go through atomic writes, and the HTML is written last: a failure part way
leaves the previous report whole.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from importlib import resources
from pathlib import Path
from string import Template
from typing import Callable

import numpy as np

import cifarkit
from cifarkit.errors import CifarkitError, OutputError
from cifarkit.evaluate import report_data as rd
from cifarkit.evaluate.metrics import roc_curves
from cifarkit.evaluate.plots import plot_confusion_matrix, plot_image_grid, plot_roc_curves, plot_training_curves
from cifarkit.fsio import atomic_open, write_text

GRID_COLUMNS = 8


def files_dir(out: Path) -> Path:
    return out.with_name(f"{out.stem}_files")


def write_report(run_dirs, out, log: Callable[[str], None] = print) -> Path:
    """Write the report of `run_dirs` to the HTML file `out` (and its files folder); returns `out`."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise CifarkitError("give at least one run directory to report on")
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give the path of the HTML file to write")
    runs = [rd.load_run(path, label) for path, label in zip(run_dirs, rd.unique_labels(run_dirs))]
    page = _Page(out)
    body = [page.overview(runs), page.recipes(runs)] + [page.run_section(r) for r in runs]
    title = "cifarkit report: " + ", ".join(r.label for r in runs)
    template = Template(resources.files("cifarkit.evaluate").joinpath("report_template.html").read_text("utf-8"))
    write_text(out, template.substitute(
        title=html.escape(title), version=html.escape(cifarkit.__version__),
        sources=", ".join(f"<code>{html.escape(str(p))}</code>" for p in run_dirs),
        files_href=html.escape(page.href(page.files)), files_name=html.escape(page.files.name + "/"),
        body="\n".join(body)))
    log(f"wrote {out} ({page.figures} figures; PNG and CSV files in {page.files})")
    return out


# ---------------------------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------------------------

def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&mdash;"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return html.escape(str(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    value = float(value)
    if value == 0 or 1e-3 <= abs(value) <= 1:
        return f"{value:.4f}"
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.4g}"


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def html_table(table: rd.Table, highlight: Callable[[list], bool] = lambda row: False) -> str:
    header, rows = table
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="num">{_fmt(v)}</td>' if _is_number(v) else f"<td>{_fmt(v)}</td>" for v in row)
        body.append(f'<tr class="selected">{cells}</tr>' if highlight(row) else f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _csv_bytes(table: rd.Table) -> bytes:
    header, rows = table
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:   # repr-exact floats: the CSV holds the same numbers as the JSON it came from
        writer.writerow(["" if v is None else repr(float(v)) if isinstance(v, (float, np.floating)) else v
                         for v in row])
    return buffer.getvalue().encode("utf-8")


class _Page:
    """Writes the files of one report and returns the HTML that shows and links them."""

    def __init__(self, out: Path):
        self.out = out
        self.files = files_dir(out)
        self.figures = 0

    def href(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.out.parent)).as_posix()

    def _links(self, *paths: Path) -> str:
        links = " ".join(f'<a href="{html.escape(self.href(p))}">{html.escape(p.name)}</a>' for p in paths)
        return f'<p class="files">{links}</p>'

    def table(self, table: rd.Table, path: Path, **kwargs) -> str:
        with atomic_open(path, "wb") as f:
            f.write(_csv_bytes(table))
        return html_table(table, **kwargs) + self._links(path)

    def figure(self, draw: Callable[[Path], Path], table: rd.Table, stem: Path, caption: str,
               max_width: int | None = None) -> str:
        """Draw a PNG and write its data as CSV; the PNG is embedded in the page as a data URI."""
        png, data = stem.with_suffix(".png"), stem.with_suffix(".csv")
        draw(png)
        with atomic_open(data, "wb") as f:
            f.write(_csv_bytes(table))
        self.figures += 1
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        style = f' style="max-width: min(100%, {max_width}px)"' if max_width else ""
        return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}"{style}>'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>" + self._links(png, data))

    # --- sections -----------------------------------------------------------------------------

    def overview(self, runs: list[rd.RunData]) -> str:
        links = "".join(f'<a href="#run-{html.escape(r.label)}">{html.escape(r.label)}</a>' for r in runs)
        return (f'<nav>{links}</nav><section id="overview"><h2>Runs</h2>'
                + self.table(rd.overview_table(runs), self.files / "runs.csv") + "</section>")

    def recipes(self, runs: list[rd.RunData]) -> str:
        differ, shared = rd.compare_recipes(runs)
        parts = ['<section id="recipe"><h2>Recipe</h2>']
        if len(runs) == 1:
            parts.append(f"<details><summary>The resolved recipe ({len(shared[1])} values)</summary>"
                         + self.table(shared, self.files / "recipe.csv") + "</details>")
        else:
            parts.append('<h3 id="recipe-differences">What differs between the runs</h3>')
            table = self.table(differ, self.files / "recipe_differences.csv")
            parts.append(table if differ[1] else _note("The runs share the same recipe."))
            parts.append('<h3 id="recipe-shared">What the runs share</h3>')
            parts.append(f"<details><summary>{len(shared[1])} values, the same in every run</summary>"
                         + self.table(shared, self.files / "recipe_shared.csv") + "</details>")
        return "".join(parts) + "</section>"

    def run_section(self, run: rd.RunData) -> str:
        folder = self.files / run.label
        parts = [f'<section class="run" id="run-{html.escape(run.label)}"><h2>Run {html.escape(run.label)}</h2>',
                 f'<p class="meta">{html.escape(str(run.root))}: recipe {html.escape(str(run.recipe.get("name")))}, '
                 f'seed {html.escape(str(run.recipe.get("seed")))}. {html.escape(str(run.recipe.get("description", "")))}</p>']
        parts.append(f'<h3 id="curves-{run.label}">Training curves</h3>')
        if run.metrics:
            parts.append(self.figure(lambda p: plot_training_curves(run.metrics, p), rd.curves_table(run.metrics),
                                     folder / "training_curves",
                                     "Loss, accuracy, learning rate and training images per second, per epoch."))
        else:
            parts.append(_note(run.notes["curves"]))
        if run.summary is None:
            parts.append(_note(run.notes["evaluation"]))
        else:
            parts.append(self._results(run, folder))
        parts.append(f'<h3 id="environment-{run.label}">Hardware and versions</h3>')
        parts.append(self.table(rd.environment_table(run.run_info, run.summary), folder / "environment.csv"))
        return "".join(parts) + "</section>"

    def _results(self, run: rd.RunData, folder: Path) -> str:
        s = run.summary
        selected = s.get("selected")
        val = s.get("models", {}).get(selected, {}).get("val_accuracy")
        why = (f"the highest validation accuracy ({_fmt(val)})" if s.get("selected_by") == "validation accuracy"
               else html.escape(str(s.get("selected_by", "not recorded"))))
        parts = [f'<h3 id="models-{run.label}">Models, TTA and ensemble</h3>',
                 f"<p>Selected: <strong>{html.escape(str(selected))}</strong>, by {why}; test accuracy "
                 f"<strong>{_fmt(s.get('test_accuracy'))}</strong> with test-time augmentation "
                 f"<code>{html.escape(str(s.get('tta')))}</code>. The test set chose nothing: it was read once, "
                 f"after the choice.</p>",
                 self.table(rd.models_table(s), folder / "models.csv", highlight=lambda row: row[-1] == "yes")]
        test = rd.selected_test(s)
        names = test.get("class_names", [])
        if test.get("confusion_matrix") and names:
            cm = np.asarray(test["confusion_matrix"])
            parts.append(f'<h3 id="confusion-{run.label}">Confusion matrix ({html.escape(str(selected))}, test)</h3>')
            parts.append(self.figure(lambda p: plot_confusion_matrix(cm, names, p, title=f"{selected} (test)"),
                                     rd.confusion_table(s), folder / "confusion_matrix",
                                     "Rows: true class; colour: share of the row; the CSV holds the counts.",
                                     max_width=720))
        parts.append(f'<h3 id="per-class-{run.label}">Per-class precision, recall, F1 and AUC</h3>')
        parts.append(self.table(rd.per_class_table(s), folder / "per_class.csv",
                                highlight=lambda row: row[0] == "macro average"))
        parts.append(self._predictions(run, folder))
        return "".join(parts)

    def _predictions(self, run: rd.RunData, folder: Path) -> str:
        p = run.predictions
        head = f'<h3 id="wrong-{run.label}">Test images the model gets most confidently wrong</h3>'
        if p is None:
            return head + _note(run.notes["predictions"])
        roc = roc_curves(p.probs, p.labels, len(p.classes))
        parts = [f'<h3 id="roc-{run.label}">ROC curves ({html.escape(p.kind)}, test)</h3>',
                 self.figure(lambda path: plot_roc_curves(roc, p.classes, path, title=f"{p.kind} (test)"),
                             rd.roc_table(roc, p.classes), folder / "roc_curves",
                             "One vs rest, per class; the legend gives each class's AUC.", max_width=720), head]
        if len(p.wrong_indices) == 0:
            return "".join(parts) + _note("The selected model classifies every test image correctly.")
        table = rd.wrong_table(p)
        captions = [f"true {row[2]}\npredicted {row[3]}\n{row[4]:.3f}" for row in table[1]]
        parts.append(self.figure(lambda path: plot_image_grid(p.wrong_images, captions, path, GRID_COLUMNS),
                                 table, folder / "most_confidently_wrong",
                                 f"The {len(p.wrong_indices)} misclassified test images with the highest "
                                 f"confidence, most confident first: true class, predicted class, confidence."))
        return "".join(parts)
