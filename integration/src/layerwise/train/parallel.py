"""Data parallelism for the training loop, applied to the model from outside (as in torchtitan's
`parallelize.py`): the model code knows nothing of processes, shards or precision policies.

    env = init_distributed()                    # joins the group torchrun / accelerate launch set up
    train_model = parallelize(model, ...)       # activation checkpointing, compile, DDP | FSDP2
    optimizer = build_optimizer(cfg, model)     # after parallelize: FSDP2 swaps in DTensor params

`train.parallelism`:
- `ddp`: `DistributedDataParallel`; every process holds the whole model, gradients are
  all-reduced (averaged) after each backward.
- `fsdp2`: `torch.distributed.fsdp.fully_shard` on every decoder layer and on the root, over a
  1-D mesh of all processes: parameters, gradients and optimizer states are DTensor shards
  (dim 0), a layer's weights are all-gathered for its forward and backward, gradients are
  reduce-scattered (averaged). Optimizers that need a statistic of the full gradient (SPAM,
  Stable-SPAM) or the full weight (AlphaDecay, LLR) reduce / gather over the mesh themselves.

In a single process (no launcher) both train the bare model. Under FSDP2 the model can be built on
the meta device and materialised after `parallelize`, each process allocating its shards only
(`shards_parameters`; `layerwise.models.init_model_weights`). `torchrun` and `accelerate launch`
both start the processes with RANK / WORLD_SIZE / MASTER_ADDR in the environment: one code path.

Mixed precision (`train.precision`): FSDP2 keeps fp32 shards and computes in bf16 through its
`MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`; DDP and a single process use
`torch.autocast` (and a `GradScaler` for fp16, which the FSDP2 path refuses).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from layerwise_core import barrier, find_decoder, full_tensor, is_distributed, is_dtensor

__all__ = [
    "DistributedEnv",
    "autocast",
    "clip_grad_norm",
    "decoder_layers",
    "gradient_sync",
    "init_distributed",
    "main_process_first",
    "mixed_precision_dtype",
    "parallelize",
    "shards_parameters",
]

Parallelism = Literal["ddp", "fsdp2"]


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process trains: its rank among `world_size` and its device."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistributedEnv:
    """Join the process group of a launcher (torchrun, `accelerate launch`), once; a process
    started without one trains alone. NCCL on CUDA, gloo on CPU; each process uses the GPU of its
    LOCAL_RANK."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
    if launched and not is_distributed():
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_destroy_process_group)
    if not is_distributed():
        return DistributedEnv(1, 0, 0, device)
    return DistributedEnv(dist.get_world_size(), dist.get_rank(), local_rank, device)


def _destroy_process_group() -> None:
    """At exit, the group `init_distributed` created: a barrier, then its destruction (gloo can
    abort the interpreter's exit without them). After an unhandled error no barrier: the other
    processes may never reach it."""
    if not is_distributed():
        return
    if getattr(sys, "last_value", None) is None:
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (it fills caches), then the others (they read them)."""
    if not is_distributed() or dist.get_rank() == 0:
        yield
        barrier()
    else:
        barrier()
        yield


def mixed_precision_dtype(precision: str) -> torch.dtype | None:
    """The compute dtype of `train.precision` ("auto": bf16 on a GPU that supports it, else
    fp32), None for fp32."""
    if precision == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "no"
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _checkpoint_forward(layer: nn.Module) -> None:
    """Activation checkpointing of one decoder layer: its forward keeps only its inputs and
    recomputes the rest in the backward (non-reentrant `torch.utils.checkpoint`). The forward is
    replaced on the instance, so parameter names and state dicts stay those of the model."""
    from torch.utils.checkpoint import checkpoint

    forward = layer.forward

    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    layer.forward = checkpointed


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Every decoder layer of `model`: `model.decoder_layers()` where the model defines it (the
    multi-head `sparse_ft.MultiHeadForCausalLM`: the backbone's, then each head's), else the
    block stack `layerwise_core.find_decoder` finds. What FSDP2 shards, activation checkpointing
    recomputes and `train.compile` compiles, one layer at a time."""
    own = getattr(model, "decoder_layers", None)
    if callable(own):
        return list(own())
    return list(find_decoder(model).layers)


def shards_parameters(parallelism: Parallelism) -> bool:
    """Whether `parallelize` shards the parameters over the processes (FSDP2 in a process group):
    then a model built on the meta device is materialised after `parallelize`, shard by shard
    (`layerwise.models.init_model_weights`), and no process ever holds the whole model."""
    return parallelism == "fsdp2" and is_distributed()


def parallelize(
    model: nn.Module,
    env: DistributedEnv,
    *,
    parallelism: Parallelism = "ddp",
    precision: str = "no",
    activation_checkpointing: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Prepare `model` for training on `env` and return the module to call in the loop (the DDP
    wrapper, or `model` itself: FSDP2 shards it in place).

    In this order, as in torchtitan: per decoder layer, activation checkpointing, then
    `torch.compile` of the layer's forward (FSDP2's hooks stay outside the compiled code), then
    the data parallelism. Build the optimizer afterwards, on `model`'s (new) parameters.

    A model on the meta device stays there under FSDP2 (`shards_parameters`): materialise its
    shards afterwards, before building the optimizer (`layerwise.models.init_model_weights`).
    """
    layers = decoder_layers(model)
    for layer in layers:
        if activation_checkpointing:
            _checkpoint_forward(layer)
        if compile:
            layer.forward = torch.compile(layer.forward)
    if not is_distributed():
        return model.to(env.device)
    if shards_parameters(parallelism):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        dtype = mixed_precision_dtype(precision)
        if dtype == torch.float16:
            raise ValueError(
                "train.precision=fp16 needs a gradient scaler, which the fsdp2 path does not run: "
                "use train.precision=bf16, or train.parallelism=ddp"
            )
        mesh = init_device_mesh(env.device.type, (env.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        # fully_shard moves the shards to the mesh's device (shards on the meta device stay there)
        for layer in layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        # the rest: embeddings, final norm(s), LM head(s)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    model.to(env.device)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def autocast(precision: str, train_model: nn.Module, device: torch.device):
    """`torch.autocast` to the compute dtype of `precision` for DDP and a single process; a no-op
    for fp32 and under FSDP2 (its `MixedPrecisionPolicy` casts instead)."""
    dtype = mixed_precision_dtype(precision)
    if dtype is None or _is_fsdp(train_model):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def gradient_sync(train_model: nn.Module, enabled: bool) -> Iterator[None]:
    """With `enabled=False`, the backward passes of the block accumulate local gradients without
    averaging them over processes (all micro-batches of an optimizer step but the last): DDP's
    `no_sync`. FSDP2 reduce-scatters after every micro-batch and accumulates the sharded
    gradients (as torchtitan does): skipping the reduction would hold each layer's whole
    gradient, upcast to fp32, on every process until the last micro-batch, which defeats
    sharding at the recipes' grad_accum of 8-64."""
    if enabled or not is_distributed() or _is_fsdp(train_model):
        yield
    else:
        with train_model.no_sync():
            yield


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global 2-norm is at most `max_norm` (no scaling for
    inf); returns the norm before clipping, a plain scalar tensor on every process.

    FSDP2 gradients are DTensor shards: the norm of the shards is reduced over the mesh
    (`full_tensor`) before the clip coefficient is taken, as in torchtitan.
    """
    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if is_dtensor(norm):
        norm = full_tensor(norm)
    if not math.isinf(max_norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
