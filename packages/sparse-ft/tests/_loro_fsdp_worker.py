"""Run by test_loro.py under `torch.distributed.run --nproc_per_node 2`: LOROAdamW with FSDP2 vs one
process. Every rank trains the same float64 low-rank net twice on the same batches: unsharded, and
with each LowRankLinear sharded by `fully_shard` over a 2-rank CPU mesh (uneven row shards), for 7
steps with an exact step every 3. Rank 0 writes the largest final difference to argv[1]."""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from layerwise_core import is_dtensor
from sparse_ft import LOROConfig, LowRankLinear


def build() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        LowRankLinear(7, 9, 3, dtype=torch.float64),
        nn.Tanh(),
        LowRankLinear(9, 5, 2, bias=True, dtype=torch.float64),
    )
    return net


def train(net: nn.Module) -> None:
    cfg = LOROConfig(lr=0.05, exact_every=3, weight_decay=0.01)
    opt = cfg.build(cfg.param_groups(net))
    gen = torch.Generator().manual_seed(1)
    for _ in range(7):
        x = torch.randn(8, 7, generator=gen, dtype=torch.float64)
        net(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    initial = [p.detach().clone() for p in build().parameters()]
    reference = build()
    train(reference)
    sharded = build()
    fully_shard(sharded[0], mesh=mesh)
    fully_shard(sharded[2], mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    train(sharded)
    final = [p.detach() for p in reference.parameters()]
    gathered = [p.full_tensor().detach() for p in sharded.parameters()]
    result = {
        "sharded": [is_dtensor(sharded[0].weight_in), is_dtensor(sharded[2].weight_out)],
        "difference": max((a - b).abs().max().item() for a, b in zip(gathered, final)),
        "moved": max((a - b).abs().max().item() for a, b in zip(final, initial)),
    }
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    from layerwise_core.testing import exit_torchrun_worker

    exit_torchrun_worker()


if __name__ == "__main__":
    main()
