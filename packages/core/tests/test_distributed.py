"""Distributed helpers: no-ops in one process; over 2 gloo processes a DTensor shard's statistic
reduces to the full tensor's."""

import textwrap

import pytest
import torch

from layerwise_core import (
    all_reduce_max,
    all_reduce_sum,
    broadcast_object,
    full_tensor,
    get_rank,
    get_world_size,
    is_main_process,
)
from layerwise_core.testing import run_torchrun

SCRIPT = textwrap.dedent(
    """
    import torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, Shard, Replicate
    from layerwise_core import all_reduce_max, all_reduce_sum, full_tensor, broadcast_object, local_tensor
    from layerwise_core.testing import exit_torchrun_worker

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    full = torch.randn(6, 5)
    sharded = distribute_tensor(full, mesh, [Shard(0)])
    shard = local_tensor(sharded)
    assert shard.shape == (3, 5)
    sq = all_reduce_sum(shard.pow(2).sum(), like=sharded)
    mx = all_reduce_max(shard.abs().max(), like=sharded)
    torch.testing.assert_close(sq.sqrt(), full.norm())
    torch.testing.assert_close(mx, full.abs().max())
    replicated = distribute_tensor(full, mesh, [Replicate()])
    same = all_reduce_sum(local_tensor(replicated).pow(2).sum(), like=replicated)
    torch.testing.assert_close(same.sqrt(), full.norm())  # replicated: no double counting
    torch.testing.assert_close(full_tensor(sharded), full)
    assert broadcast_object({"rank": dist.get_rank()}) == {"rank": 0}
    print("OK", flush=True)
    exit_torchrun_worker()  # barrier, then exit without gloo's flaky teardown
    """
)


def test_single_process_no_ops():
    t = torch.tensor([2.0])
    assert all_reduce_sum(t) is t and t.item() == 2.0
    assert all_reduce_max(t).item() == 2.0
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    assert full_tensor(t) is t and broadcast_object([1]) == [1]


@pytest.mark.distributed
def test_dtensor_shard_statistics_over_two_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    result = run_torchrun(script, nproc=2)
    assert result.stdout.count("OK") == 2


@pytest.mark.parametrize(
    ("count", "batch_size", "world", "expected"),
    [
        # rank r scores batches r, r + W, ...; idle = batches of rank 0 minus its own
        (10, 3, 2, [([0, 6], 0), ([3, 9], 0)]),  # 4 batches: 2 each
        (7, 3, 2, [([0, 6], 0), ([3], 1)]),  # 3 batches: rank 1 runs one idle pass
        (2, 4, 3, [([0], 0), ([], 1), ([], 1)]),  # one batch for three processes
        (5, 2, 1, [([0, 2, 4], 0)]),
    ],
)
def test_rank_batch_starts_deal_batches_and_count_idle_passes(
    monkeypatch, count, batch_size, world, expected
):
    import layerwise_core.distributed as distributed

    monkeypatch.setattr(distributed, "get_world_size", lambda: world)
    for rank, (starts, idle) in enumerate(expected):
        monkeypatch.setattr(distributed, "get_rank", lambda rank=rank: rank)
        got = distributed.rank_batch_starts(count, batch_size)
        assert (list(got[0]), got[1]) == (starts, idle)
