"""What a run directory records about the command that made it."""

from __future__ import annotations

from cifarkit.train.run import command_line


def test_command_line_keeps_the_arguments_but_not_the_install_path():
    argv = ["/opt/venvs/x/bin/cifarkit", "train", "--data-dir", "../data/cifar"]
    assert command_line(argv) == "cifarkit train --data-dir ../data/cifar"


def test_command_line_of_an_empty_argv_is_empty():
    assert command_line([]) == ""
