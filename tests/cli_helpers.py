"""Running the `cifarkit` command in tests: in this process with the one-line error contract
checked, in a child process (optionally with a fault patched in first), and the tiny seed002 run
the command-line tests train."""

from __future__ import annotations

import os
import subprocess
import sys

from cifarkit.cli import main

# seed002 shrunk to seconds on the fake CIFAR-10: 8/16 channels, one block per stage, batch 64.
TINY_SEED002 = ["--recipe", "seed002", "--set", "data.verify=false", "--set", "data.val_size=100",
                "--set", "model.stem_width=8", "--set", "model.widths=[8,16]", "--set", "model.blocks=[1,1]",
                "--set", "train.batch_size=64"]

_CHILD = """
import contextlib, os, signal, sys, time
{patch}
from cifarkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_child(args, patch: str = "", threads: int = 1, **kw) -> subprocess.Popen:
    """`cifarkit ARGS` in a new Python process, after running `patch` (module-level code)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}     # `kw` may give its own
    return subprocess.Popen([sys.executable, "-c", _CHILD.format(patch=patch), *map(str, args)], env=env,
                            text=True, **streams)


def error_line(capsys, argv) -> tuple[int, str]:
    """`cifarkit ARGV` in this process, expected to fail: its exit code and its one stderr line,
    after checking that the error is that one line, `cifarkit: error: ...`, with no traceback."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifarkit: error: ") and "Traceback" not in err, err
    return rc, lines[0]


def refusal(capsys, argv, code: int | None) -> str:
    """The one error line of a refused command whose exit code is `code` (None: any non-zero code)."""
    rc, line = error_line(capsys, argv)
    assert rc != 0 and (code is None or rc == code), (rc, line)
    return line
