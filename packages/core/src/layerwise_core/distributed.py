"""Distributed helpers that are no-ops in a single process, and DTensor-aware reductions.

Optimizers that need a statistic of the FULL gradient (max, Frobenius norm) while parameters are
FSDP2 shards call `all_reduce_max` / `all_reduce_sum` over the shard's mesh.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "full_tensor",
    "get_rank",
    "get_world_size",
    "is_distributed",
    "is_dtensor",
    "is_main_process",
    "local_part",
    "local_tensor",
    "rank_batch_starts",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def is_dtensor(tensor: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(tensor, DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of the full value `full` that a DTensor shaped like it, `like`, holds in this
    process (e.g. its rows under FSDP2's Shard(0)): a view, without communication; `full` itself
    when `like` is a plain tensor. The inverse of `full_tensor`, e.g. to fill a sharded parameter
    from a value every process computes."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(
            f"local_part: a full value of shape {tuple(full.shape)} for a DTensor of "
            f"shape {tuple(like.shape)}"
        )
    shape, offset = compute_local_shape_and_global_offset(
        full.shape, like.device_mesh, like.placements
    )
    return full[tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))]


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The full (gathered) value of a DTensor, or the tensor itself. Collective for DTensors."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def _reduce(tensor: torch.Tensor, like: Any, op) -> torch.Tensor:
    if not is_distributed() or (like is not None and not is_dtensor(like)):
        return tensor
    if like is None:
        dist.all_reduce(tensor, op=op)
        return tensor
    # a statistic of a DTensor shard is reduced over the mesh dimensions that shard it only
    mesh = like.device_mesh
    for dim, placement in enumerate(like.placements):
        if placement.is_shard():
            dist.all_reduce(tensor, op=op, group=mesh.get_group(dim))
    return tensor


def all_reduce_sum(tensor: torch.Tensor, like: Any = None) -> torch.Tensor:
    """Sum over ranks, in place; returns `tensor`. No-op when not distributed.

    With `like` a DTensor, reduce only over the mesh dimensions along which `like` is sharded (the
    statistic of a shard becomes that of the full tensor). With `like` a plain tensor, do nothing: a
    replicated parameter's statistic is already global.
    """
    return _reduce(tensor, like, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor, like: Any = None) -> torch.Tensor:
    """Max over ranks; same rules as `all_reduce_sum`."""
    return _reduce(tensor, like, dist.ReduceOp.MAX)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Every rank returns rank `src`'s object. Identity when not distributed."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_batch_starts(count: int, batch_size: int) -> tuple[range, int]:
    """Items 0..count-1 scored `batch_size` at a time, batches dealt round robin to the
    processes: (the start indices of this process's batches, how many batches fewer than the
    busiest process it has).

    Under FSDP2 a forward pass is collective (each layer all-gathers its weights): a process with
    fewer batches must run that many idle forward passes, or the busiest one waits forever.
    """
    rank, world = get_rank(), get_world_size()
    starts = range(rank * batch_size, count, world * batch_size)
    busiest = len(range(0, count, world * batch_size))  # rank 0 gets the first batch of each round
    return starts, busiest - len(starts)
