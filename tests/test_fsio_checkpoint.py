import errno
import os
import pickle

import pytest
import torch

from cifarkit.errors import CheckpointError, OutputError
from cifarkit.fsio import append_jsonl, atomic_open, check_can_write, check_folder_writable, read_jsonl, write_json
from cifarkit.train.checkpoint import load_checkpoint, load_weights, save_checkpoint


def test_atomic_write_keeps_old_content_when_writing_fails(tmp_path):
    target = tmp_path / "summary.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write('{"a": 2, "half')
            raise RuntimeError("disk died")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["summary.json"]      # no temporary file left behind


def test_check_can_write_accepts_what_a_write_would_manage_and_leaves_nothing(tmp_path):
    check_can_write(tmp_path / "new" / "deeper" / "result.json")     # folders a write would make
    append_jsonl(tmp_path / "runs.jsonl", {"seed": 0})
    check_can_write(tmp_path / "runs.jsonl", append=True)
    assert sorted(os.listdir(tmp_path)) == ["runs.jsonl"]            # no probe file, no folder left


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_check_can_write_refuses_what_a_write_would_fail_on(tmp_path, where):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    (tmp_path / "results").mkdir()
    target = tmp_path / "notes.txt" / "sub" / "result.json" if where == "under a file" else tmp_path / "results"
    with pytest.raises(OutputError, match=f"cannot write to {target}"):
        check_can_write(target)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "results"] and os.listdir(tmp_path / "results") == []
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


def test_check_folder_writable_makes_the_folder_and_leaves_no_probe(tmp_path):
    check_folder_writable(tmp_path / "runs" / "a")
    assert os.listdir(tmp_path / "runs" / "a") == []


def test_check_folder_writable_on_a_full_disk_leaves_no_partial_probe(monkeypatch, tmp_path):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=f"cannot write to {tmp_path / 'run'}: No space left on device"):
        check_folder_writable(tmp_path / "run")
    assert os.listdir(tmp_path / "run") == []              # the half-written megabyte is gone too


def test_jsonl_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "tr')
    assert read_jsonl(path) == [{"epoch": 1}]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": model.state_dict(), "epoch": 3})
    state = load_checkpoint(path)
    assert state["epoch"] == 3
    other = torch.nn.Linear(3, 2)
    load_weights(other, state["model"], "x")
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(CheckpointError, match="different architecture"):
        load_weights(torch.nn.Linear(4, 2), state["model"], "last.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(truncated)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "cifarkit-checkpoint-v1", "model": _Payload()}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
