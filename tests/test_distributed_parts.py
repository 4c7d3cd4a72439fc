"""The pieces of data-parallel training that need no second process: how a rank cuts its share of
a global batch, when BatchNorm synchronizes, the replay of BN running statistics, a world of one,
and the launcher's argument handling. The multi-process behaviour is in test_distributed_training.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifarkit.config import TrainConfig, load_recipe
from cifarkit.errors import ConfigError
from cifarkit.train import distributed
from cifarkit.train.distributed import World, _one_line, lost_contact
from cifarkit.train.launch import launch, without_nproc
from cifarkit.train.parallel import ParallelStep, normalized_images, replay, uses_sync_bn


def step_of(rank: int, size: int, **cfg) -> ParallelStep:
    """A rank's ParallelStep without a process group (only the arithmetic is used)."""
    world = World(rank=rank, size=size)
    return ParallelStep(nn.Linear(2, 2), TrainConfig(**cfg), world, log=lambda m: None)


@pytest.mark.parametrize("batch, micro", [(64, 0), (64, 16), (60, 16), (64, 100)])
def test_one_process_cuts_its_batch_where_split_does(batch, micro):
    step = step_of(0, 1, batch_size=batch, micro_batch=micro)
    x = torch.arange(batch)
    pieces = list(step.pieces(x, x))
    expected = x.split(micro or batch)
    assert [p[0].tolist() for p in pieces] == [e.tolist() for e in expected]
    assert [p[3] for p in pieces] == [len(e) / batch for e in expected]      # the weights it always had


@pytest.mark.parametrize("micro, sync", [(16, False), (0, True), (100, True)])
def test_ranks_cover_the_global_batch_once_and_weigh_it_like_one_process(micro, sync):
    size, batch = 2, 64
    x = torch.arange(batch)
    rows, weights = [], []
    for rank in range(size):
        step = step_of(rank, size, batch_size=batch, micro_batch=micro)
        for xs, _, _, weight in step.pieces(x, x):
            rows += xs.tolist()
            weights.append(weight / size)      # DDP averages over the ranks
    assert rows == list(range(batch))
    assert sum(weights) == pytest.approx(1.0)
    assert uses_sync_bn(TrainConfig(batch_size=batch, micro_batch=micro), size) is sync


def test_aligned_micro_batches_are_the_single_process_pieces():
    one = [a.tolist() for a, *_ in step_of(0, 1, batch_size=2000, micro_batch=250).pieces(torch.arange(2000),
                                                                                         torch.arange(2000))]
    four = [a.tolist() for r in range(4)
            for a, *_ in step_of(r, 4, batch_size=2000, micro_batch=250).pieces(torch.arange(2000), torch.arange(2000))]
    assert one == four
    assert normalized_images(TrainConfig(batch_size=2000, micro_batch=250), 4, sync=False) == (250, 250)
    assert normalized_images(TrainConfig(batch_size=128), 2, sync=True) == (128, 128)
    assert normalized_images(TrainConfig(batch_size=128), 2, sync=False) == (128, 64)


def test_with_sync_bn_every_rank_runs_as_many_pieces():
    """SyncBatchNorm meets once per piece: a rank with one piece more would wait for ever."""
    counts = []
    for rank in range(4):
        world = World(rank=rank, size=4, distributed=True)       # only the arithmetic: no collective runs
        step = ParallelStep(nn.Linear(2, 2), TrainConfig(batch_size=1000, micro_batch=300), world,
                            log=lambda m: None)
        assert step.sync_bn
        counts.append(len(step.bounds(1000)) - 1)
    assert counts == [1, 1, 1, 1]
    assert step_of(1, 4, batch_size=1000, micro_batch=300).bounds(1000) == [250, 300, 500]   # the cuts one process makes


def test_sync_bn_follows_the_recipe_switch():
    assert uses_sync_bn(TrainConfig(batch_size=64, micro_batch=16, sync_bn=True), 2) is True
    assert uses_sync_bn(TrainConfig(batch_size=64, sync_bn=False), 2) is False
    assert uses_sync_bn(TrainConfig(batch_size=64, sync_bn=True), 1) is False        # nothing to sync alone
    assert load_recipe("fast94", ["train.sync_bn=false"]).train.sync_bn is False
    with pytest.raises(ConfigError, match="sync_bn"):
        load_recipe("fast94", ["train.sync_bn=1"])


def test_a_batch_the_processes_cannot_share_evenly_is_refused():
    with pytest.raises(ConfigError, match="multiple of the 3 processes"):
        step_of(0, 3, batch_size=64)


def test_replayed_running_statistics_equal_one_process_updating_piece_after_piece():
    torch.manual_seed(0)
    pieces = [torch.randn(8, 3, 4, 4) * 2 + 1 for _ in range(6)]
    one = nn.BatchNorm2d(3, momentum=0.4)
    one.running_mean.fill_(0.3)
    start = torch.cat([one.running_mean, one.running_var]).double()
    for p in pieces:
        one(p)
    ends = []
    for rank_pieces in (pieces[:1], pieces[1:4], pieces[4:]):          # three ranks: 1, 3 and 2 pieces
        bn = nn.BatchNorm2d(3, momentum=0.4)
        bn.running_mean.fill_(0.3)
        for p in rank_pieces:
            bn(p)
        ends.append(torch.cat([bn.running_mean, bn.running_var]).double())
    merged = replay(start, ends, [1, 3, 2], torch.full((6,), 0.6, dtype=torch.float64))
    expected = torch.cat([one.running_mean, one.running_var]).double()
    assert torch.allclose(merged, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(ends[-1], expected, atol=1e-3)      # one rank alone is not the answer


def test_a_world_of_one_passes_everything_through():
    world = World()
    loss, hits = torch.tensor(1.5), torch.tensor(3)
    assert world.sum(loss, hits) == (loss, hits)
    assert world.agreed_signal(None) is None and world.agreed_signal(15) == 15
    assert world.gather({"a": 1}) == [{"a": 1}]
    assert world.together(lambda: 7) == 7
    assert world.stream_key == () and World(rank=1, size=2).stream_key == ("rank", 1)
    with distributed.join(torch.device("cpu")) as joined:      # not launched: a world of one
        assert not joined.distributed and joined.size == 1


def test_lost_contact_is_told_in_one_line():
    gloo = RuntimeError("[/src/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:27566: "
                        "Connection reset by peer. This is typically caused by a remote worker. GLHF!\nmore")
    assert lost_contact(gloo)
    assert _one_line(gloo) == "Read error [127.0.0.1]:27566: Connection reset by peer."
    assert not lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_the_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("CIFARKIT_DIST_TIMEOUT", raising=False)
    assert distributed.timeout_seconds() == distributed.DEFAULT_TIMEOUT_SECONDS
    monkeypatch.setenv("CIFARKIT_DIST_TIMEOUT", "45")
    assert distributed.timeout_seconds() == 45.0
    monkeypatch.setenv("CIFARKIT_DIST_TIMEOUT", "soon")
    with pytest.raises(distributed.DistributedError, match="CIFARKIT_DIST_TIMEOUT"):
        distributed.timeout_seconds()


def test_the_rank_command_is_the_launcher_command_without_nproc():
    assert without_nproc(["train", "--nproc", "2", "--recipe", "x", "--nproc=4", "--epochs", "1"]) == \
        ["train", "--recipe", "x", "--epochs", "1"]


def test_nproc_is_refused_under_torchrun_and_below_one(monkeypatch):
    with pytest.raises(ConfigError, match="at least 1"):
        launch(0, ["train"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="under torchrun"):
        launch(2, ["train"])


def test_cumulative_batchnorm_cannot_be_merged_and_says_what_to_do():
    from cifarkit.train.parallel import RunningStatsMerge
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, momentum=None))
    with pytest.raises(ConfigError, match="train.sync_bn=true"):
        RunningStatsMerge(model, World(rank=0, size=2, distributed=True), [1, 1])


def test_run_json_names_a_rank_started_as_python_dash_m_cifarkit():
    """torchrun starts each rank as `python -m cifarkit train ...`, whose argv[0] is __main__.py."""
    from cifarkit.train.run import command_line
    argv = ["/opt/venvs/x/lib/python3.11/site-packages/cifarkit/__main__.py", "train", "--recipe", "fast94"]
    assert command_line(argv) == "cifarkit train --recipe fast94"
