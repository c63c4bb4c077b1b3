"""Run by test_dst.py under `torch.distributed.run --nproc_per_node 2` (gloo): DynamicSparsity on a
tiny HF Llama with 2-process DDP and FSDP2 vs one process. Every rank trains the model three ways on
the same batches of 4 sequences: alone (the 1-process reference: both halves of the batch, the
gradient g0 / 2 + g1 / 2 as DDP averages it), with DDP (each rank its half), and with FSDP2 (each
decoder layer and the root sharded). Soft prune and gradient growth every 2 of 8 steps, in clean
and reference-quirks modes. Rank 0 writes to argv[1] whether masks and losses were bitwise equal,
and whether both ranks held the same masks."""

import hashlib
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from layerwise_core import is_dtensor, tiny_llama
from layerwise_core.testing import exit_torchrun_worker
from sparse_ft.dst import DSTConfig, DynamicSparsity

STEPS = 8


def config(quirks: bool) -> DSTConfig:
    return DSTConfig(density=0.5, update_every=2, prune="soft", reference_quirks=quirks)


def batches():
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, 128, (4, 16), generator=gen) for _ in range(STEPS)]


def train_reference(quirks: bool):
    model = tiny_llama(seed=0).train()
    sparsity = DynamicSparsity(model, config(quirks), total_steps=STEPS, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    params = [p for p in model.parameters()]
    losses = []
    for x in batches():
        halves = [x[:2], x[2:]]
        parts = [model(input_ids=h, labels=h).loss for h in halves]
        grads = [torch.autograd.grad(loss, params) for loss in parts]
        for p, g0, g1 in zip(params, *grads):
            p.grad = g0 / 2 + g1 / 2
        losses.append(((parts[0].detach() + parts[1].detach()) / 2).item())
        opt.step()
        sparsity.step(opt)
        opt.zero_grad()
    return sparsity, losses


def train_distributed(quirks: bool, kind: str):
    rank = dist.get_rank()
    model = tiny_llama(seed=0).train()
    if kind == "ddp":
        wrapped = DistributedDataParallel(model)
    else:
        mesh = init_device_mesh("cpu", (2,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    sparsity = DynamicSparsity(model, config(quirks), total_steps=STEPS, seed=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for x in batches():
        h = x[2 * rank : 2 * rank + 2]
        loss = wrapped(input_ids=h, labels=h).loss
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append((total / 2).item())
        opt.step()
        sparsity.step(opt)
        opt.zero_grad()
    sharded = any(is_dtensor(p) for p in model.parameters())
    return sparsity, losses, sharded


def digest(sparsity: DynamicSparsity) -> str:
    h = hashlib.sha256()
    for name in sparsity.names:
        h.update(sparsity.masks[name].cpu().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    dist.init_process_group("gloo")
    result = {}
    for quirks in (False, True):
        reference, ref_losses = train_reference(quirks)
        for kind in ("ddp", "fsdp2") if not quirks else ("ddp",):
            sparsity, losses, sharded = train_distributed(quirks, kind)
            digests = [None, None]
            dist.all_gather_object(digests, digest(sparsity))
            result[f"{kind}/quirks={quirks}"] = {
                "masks_equal": all(
                    torch.equal(sparsity.masks[n].cpu(), reference.masks[n])
                    for n in reference.names
                ),
                "same_on_ranks": digests[0] == digests[1],
                "losses_equal": losses == ref_losses,
                "loss_difference": max(abs(a - b) for a, b in zip(losses, ref_losses)),
                "losses": losses,
                "sharded": sharded,
                "changed_from_init": digest(sparsity) != initial_digest(quirks),
            }
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    exit_torchrun_worker()


def initial_digest(quirks: bool) -> str:
    return digest(DynamicSparsity(tiny_llama(seed=0), config(quirks), total_steps=STEPS, seed=3))


if __name__ == "__main__":
    main()
