"""Run by test_fsdp.py under `torch.distributed.run --nproc_per_node 2`: FSDP2 vs one process.

Every rank trains the same float64 MLP twice on the same batches: once unsharded (the single-process
reference) and once with every Linear sharded by `fully_shard` over a 2-rank CPU mesh. Rank 0 writes
the largest difference between the two final parameter sets, per case, to the JSON file argv[1].
The last Linear has one output row, so one rank holds an empty shard of it.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import spam_opt.stable_spam as stable_spam_module
from spam_opt import SPAM, StableSPAM

SPAM_HYPER = dict(lr=1e-2, warmup_steps=2, reset_interval=4, clip_delay=2, threshold=2.0)
STABLE_HYPER = dict(lr=1e-2, total_steps=8, reset_interval=4, gamma3=0.99, weight_decay=0.1)
CASES = {
    "spam_foreach": (SPAM, dict(SPAM_HYPER, foreach=True), None),
    "spam_single": (SPAM, dict(SPAM_HYPER, foreach=False), None),
    "spam_sparse_momentum": (SPAM, dict(SPAM_HYPER), 0.5),
    "stable_spam_foreach": (StableSPAM, dict(STABLE_HYPER, foreach=True), None),
    "stable_spam_single": (StableSPAM, dict(STABLE_HYPER, foreach=False), None),
    "stable_spam_quirks": (StableSPAM, dict(STABLE_HYPER, reference_quirks=True), None),
}


def build() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 1)]
    return nn.Sequential(*layers).double()


def train(net: nn.Module, cls, hyper, density) -> None:
    named = dict(net.named_parameters())
    if density is None:
        groups = [{"params": list(named.values())}]
    else:
        groups = [
            {"params": [named["0.weight"]], "density": density},
            {"params": [p for n, p in named.items() if n != "0.weight"]},
        ]
    torch.manual_seed(123)  # the sparse-momentum masks: the same full masks on every rank
    opt = cls(groups, **hyper)
    gen = torch.Generator().manual_seed(1)
    for step in range(10):
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        loss = net(x).pow(2).mean() * (300.0 if step in (3, 6) else 1.0)  # gradient spikes
        loss.backward()
        opt.step()
        opt.zero_grad()


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def run_case(mesh, cls, hyper, density) -> dict[str, float]:
    """The largest difference sharded vs one process, and how far training moved the parameters."""
    initial = [p.detach().clone() for p in build().parameters()]
    reference = build()
    train(reference, cls, hyper, density)
    sharded = build()
    for layer in (sharded[0], sharded[2], sharded[4]):
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    train(sharded, cls, hyper, density)
    final = [p.detach() for p in reference.parameters()]
    return {
        "difference": max_difference([p.full_tensor() for p in sharded.parameters()], final),
        "moved": max_difference(final, initial),
    }


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    results = {name: run_case(mesh, *case) for name, case in CASES.items()}
    # Control: without the all-reduce of max|g| and ||g|| the shards would clip and scale by their
    # local statistics, and the sharded run would leave the single-process trajectory.
    stable_spam_module.all_reduce_per_tensor = lambda values, params, op: None
    results["control_without_all_reduce"] = run_case(mesh, *CASES["stable_spam_foreach"])
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f, indent=1)
    from layerwise_core.testing import exit_torchrun_worker

    exit_torchrun_worker()  # barrier, then exit without gloo's flaky teardown


if __name__ == "__main__":
    main()
