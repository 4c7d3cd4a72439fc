"""Two `cifarkit sweep` workers on one study in a real PostgreSQL server, which the test starts in
a temporary folder (initdb, pg_ctl; Unix socket only, no TCP) and stops afterwards. The server is
Debian's `postgresql` package (.ci/run installs it); PostgreSQL refuses to run as root, so as root
the server runs as the `postgres` system user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest

from sweep_fakes import start_worker, sweep_command, write_inputs

TRIALS = 6


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent     # the folder that holds pg_ctl and createdb too
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed; "
                    "apt-get install postgresql (as .ci/run does)")
    if os.geteuid() == 0:
        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, but there is no 'postgres' system user to run the server as")
    # Directly under the temporary folder: the server user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="cifarkit-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets):
            os.chown(path, server_user.pw_uid, server_user.pw_gid)
    port = "55432"        # names the socket file in our own folder; no TCP port is opened
    run = lambda *cmd: subprocess.run(_as_server_user([str(bindir / cmd[0]), *cmd[1:]]), check=True,  # noqa: E731
                                      capture_output=True, timeout=120)
    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {sockets} -c listen_addresses=''")
    try:
        run("createdb", "-h", str(sockets), "-p", port, "-U", "postgres", "sweeps")
        yield f"postgresql+psycopg2://postgres@/sweeps?host={sockets}&port={port}"
    finally:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_concurrent_workers_share_one_study(postgres_url, fake_cifar, tmp_path):
    write_inputs(tmp_path)
    workers = [start_worker(tmp_path, sweep_command(fake_cifar, "pg", TRIALS, "--storage", postgres_url,
                                                    "--worker", str(i)), tmp_path / f"worker{i}.log")
               for i in range(2)]
    for i, worker in enumerate(workers):
        try:
            rc = worker.wait(timeout=600)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
        assert rc == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    # every number used once, none skipped; every trial finished (none lost, running or failed)
    assert sorted(numbers) == list(range(len(trials))) and len(set(numbers)) == len(numbers)
    assert TRIALS <= len(trials) <= TRIALS + 1          # a worker may start one while the other finishes the last
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}
    runs = tmp_path / "runs" / "pg"
    for t in trials:
        if t.user_attrs.get("pruned_reason") != "over budget":
            assert (runs / f"trial-{t.number}" / "recipe.yaml").is_file()
            assert len((runs / f"trial-{t.number}" / "metrics.jsonl").read_text().splitlines()) == len(t.intermediate_values)
    assert not (runs / "study.db").exists()             # the study lives in PostgreSQL
