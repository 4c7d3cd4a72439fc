"""What a user and a script can rely on from the command line: help with examples, distinct exit
codes, no silent abbreviations, output that can be followed live, one lock per run, refusals
before any work, and an interrupted bench that keeps what it measured."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import yaml

from cifarkit.cli import build_parser, main
from cifarkit.config import load_recipe, recipe_to_dict
from cli_helpers import TINY_SEED002, cli_child, error_line

TINY = [*TINY_SEED002, "--set", "augment.policy=none", "--set", "augment.erasing_p=0",
        "--set", "train.precision=fp32", "--device", "cpu"]


def child(args, patch: str = "", **kw):
    return cli_child(args, patch, threads=1, **kw)


# -- help ---------------------------------------------------------------------------------------

def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    return action.choices


@pytest.mark.parametrize("name", ["recipes", "summary", "train", "evaluate", "report", "predict", "export",
                                  "download", "bench", "sweep"])
def test_every_command_has_a_description_help_on_every_option_and_examples(name):
    parser = subcommands()[name]
    assert parser.description and len(parser.description) > 60
    assert "examples:" in parser.epilog and f"cifarkit {name}" in parser.epilog
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{name} {action.option_strings} has no help text"


def test_files_the_examples_name_are_in_the_repository():
    from pathlib import Path

    from cifarkit.cli_help import EXAMPLES
    root = Path(__file__).resolve().parents[1]
    named = [word for text in EXAMPLES.values() for word in text.split() if word.startswith("benchmarks/")]
    assert named, "the examples name no repository file: this test checks nothing"
    for path in named:
        assert (root / path).exists(), path


def test_main_help_lists_the_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "examples:" in out and "train" in out and "predict" in out


# -- recipes show ---------------------------------------------------------------------------------

def test_recipes_show_prints_the_resolved_recipe_that_trains_as_it_is(capsys, tmp_path):
    assert main(["recipes", "show", "fast94", "--set", "train.epochs=12", "--set", "seed=3"]) == 0
    text = capsys.readouterr().out
    saved = tmp_path / "mine.yaml"
    saved.write_text(text)
    expected = recipe_to_dict(load_recipe("fast94", ["train.epochs=12", "seed=3"]))
    assert yaml.safe_load(text) == expected
    assert recipe_to_dict(load_recipe(str(saved))) == {**expected, "name": "fast94"}
    assert main(["recipes"]) == 0 and "seed002" in capsys.readouterr().out


def test_unknown_recipe_suggests_only_a_close_match(capsys):
    _, line = error_line(capsys, ["recipes", "show", "nope"])
    assert "did you mean" not in line and "built-in:" in line
    _, line = error_line(capsys, ["recipes", "show", "seed03"])
    assert "did you mean 'seed003'?" in line


# -- exit codes -----------------------------------------------------------------------------------

def test_usage_errors_and_abbreviations_exit_2(capsys):
    for argv in (["train", "--no-such-option"], ["train", "--rec", "seed003"], ["summary", "--ru", "x"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv


def test_each_kind_of_error_has_its_own_exit_code(capsys, tmp_path, fake_cifar, monkeypatch):
    out = tmp_path / "run"
    assert error_line(capsys, ["train", *TINY, "--set", "train.lrr=1"])[0] == 3                 # recipe
    assert error_line(capsys, ["train", *TINY, "--set", "model.widths=[4096,4096]", "--data-dir",
                               tmp_path / "no-data"])[0] == 3                                   # budget, before data
    assert error_line(capsys, ["train", *TINY, "--data-dir", tmp_path / "nothing", "--set",
                               "data.download=false", "--out", out])[0] == 4                    # data
    assert not out.exists()                                                                      # a refused start leaves nothing
    assert error_line(capsys, ["evaluate", tmp_path])[0] == 5                                   # not a run
    if not __import__("torch").cuda.is_available():
        assert error_line(capsys, ["train", *TINY, "--device", "cuda"])[0] == 6                 # no GPU
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert error_line(capsys, ["train", *TINY, "--data-dir", fake_cifar, "--out", blocker / "run"])[0] == 9
    import cifarkit.train.run as run_module

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")
    monkeypatch.setattr(run_module, "train_run", no_memory)
    rc, line = error_line(capsys, ["train", *TINY, "--data-dir", fake_cifar, "--out", out])
    assert rc == 7 and "lower train.batch_size" in line

    def python_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(run_module, "train_run", python_memory)
    assert error_line(capsys, ["train", *TINY, "--data-dir", fake_cifar, "--out", out])[0] == 7


def test_a_diverging_run_exits_8(capsys, tmp_path, fake_cifar):
    rc, line = error_line(capsys, ["train", *TINY, "--set", "train.lr=1.0e+30", "--set", "train.warmup_epochs=0",
                                  "--data-dir", fake_cifar, "--out", tmp_path / "run", "--no-eval", "--epochs", "1"])
    assert rc == 8 and "non-finite loss or gradients" in line


# -- live output ----------------------------------------------------------------------------------

def test_log_lines_reach_a_pipe_while_training_runs(tmp_path, fake_cifar):
    slow = "import cifarkit.train.trainer as t\nreal = t.Trainer._step\n" \
           "def step(self, *a):\n    time.sleep(0.5)\n    return real(self, *a)\nt.Trainer._step = step\n"
    proc = child(["train", *TINY, "--epochs", "3", "--data-dir", fake_cifar, "--out", tmp_path / "run", "--no-eval"],
                 patch=slow)
    try:
        first = proc.stdout.readline()
        assert first.startswith("CIFAR-10: ") and proc.poll() is None     # printed, and the run goes on
        lines = [proc.stdout.readline() for _ in range(4)]
        assert any(line.startswith("training seed002: 3 epochs") for line in lines) and proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()


def test_a_pipe_closed_by_its_reader_ends_the_command_silently_with_141():
    # `cifarkit recipes | head -1`: the reader is gone before the listing is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = child(["recipes"], stdout=write_end)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGPIPE and err == "", err


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error_line():
    # Stdout is open (this test reads it): another pipe broke, and the user has to hear of it.
    broken = "import cifarkit.cli as c\ndef cmd(args):\n    raise BrokenPipeError(32, 'Broken pipe')\n" \
             "c.cmd_recipes = cmd\n"
    proc = child(["recipes"], patch=broken)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 9 and err.strip() == "cifarkit: error: Broken pipe", err


# -- one process per run --------------------------------------------------------------------------

def test_a_second_process_on_the_same_run_is_refused(tmp_path, fake_cifar, capsys):
    run = tmp_path / "run"
    slow = "import cifarkit.train.trainer as t\nreal = t.Trainer._step\n" \
           "def step(self, *a):\n    time.sleep(0.3)\n    return real(self, *a)\nt.Trainer._step = step\n"
    proc = child(["train", *TINY, "--epochs", "20", "--data-dir", fake_cifar, "--out", run, "--no-eval"], patch=slow)
    try:
        deadline = time.time() + 120
        while not (run / "recipe.yaml").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (run / "recipe.yaml").exists(), proc.stderr.read() if proc.poll() is not None else "no run yet"
        rc, line = error_line(capsys, ["train", "--resume", run, "--data-dir", fake_cifar, "--no-eval"])
        assert rc == 5 and "in use by another cifarkit process" in line
        rc, line = error_line(capsys, ["evaluate", run, "--data-dir", fake_cifar])
        assert rc == 5 and "in use" in line
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)                      # an epoch done: the run's own signal handling is in place
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert main(["train", "--resume", str(run), "--data-dir", str(fake_cifar), "--no-eval", "--epochs", "2",
                 "--force"]) == 0                                    # the lock died with its process


# -- an interrupted bench -------------------------------------------------------------------------

def test_an_interrupted_bench_writes_the_finished_seeds_marked_partial(tmp_path, fake_cifar):
    stop_in_third_run = ("import cifarkit.train.trainer as t\nreal_fit, real_step = t.Trainer.fit, t.Trainer._step\n"
                         "fits = []\n"
                         "def fit(self):\n    fits.append(1)\n    return real_fit(self)\n"
                         "def step(self, *a):\n    out = real_step(self, *a)\n"
                         "    if len(fits) == 3: signal.raise_signal(signal.SIGTERM)\n    return out\n"
                         "t.Trainer.fit, t.Trainer._step = fit, step\n")      # warm-up, seed 5, then seed 6
    out = tmp_path / "bench.json"
    proc = child(["bench", "--recipe", "fast94", "--seeds", "3", "--first-seed", "5", "--device", "cpu",
                  "--data-dir", fake_cifar, "--out", out, "--set", "data.verify=false", "--set", "data.train_subset=64",
                  "--set", "train.epochs=1", "--set", "train.batch_size=32", "--set", "train.micro_batch=0",
                  "--set", "model.widths=[8,16,16]"], patch=stop_in_third_run)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == [
        f"cifarkit: error: SIGTERM received: bench stopped during seed 6; finished seeds: 5; wrote {out} "
        "(marked partial)"]
    result = json.loads(out.read_text())
    assert result["partial"] is True and result["seeds"] == [5] and result["interrupted_at_seed"] == 6
    assert result["accuracy"]["n"] == 1 and "resume" not in stderr
