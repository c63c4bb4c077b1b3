"""What SPAM and Stable-SPAM share: the checks of Adam's hyper-parameters and of gradients, the
gathering of a param group's state (`init_group`), the choice of execution path, the CPU chunking of
the foreach path, DTensor-aware per-tensor statistics and the dtypes of state that torch would cast.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.optim.optimizer import Optimizer

from layerwise_core import all_reduce_max, all_reduce_sum, is_dtensor, local_tensor
from layerwise_kernels import triton_available
from layerwise_kernels._backend import resolve_backend

# dtypes the fused Triton step computes in fp32 (fp64 for fp64) and stores back.
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# The foreach path walks CPU tensors in slices of this many elements per torch thread (512 KiB of
# fp32), so that a slice and its temporaries stay in cache from one op to the next: on CPU every
# foreach op is a loop over tensors, and a chain of ten ops over 100M-element tensors is bound by
# memory bandwidth, not arithmetic. Measured on 2-core Xeons: 128K beats 8K, 32K, 512K and no slicing.
CPU_SLICE_PER_THREAD = 131072


def check_adam_hyperparameters(group: dict[str, Any]) -> None:
    """Reject what Adam itself rejects (torch.optim.Adam's checks and messages), and fused + foreach."""
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    if isinstance(lr, torch.Tensor) or not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr!r} (a float >= 0)")
    if not 0.0 <= beta1 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {beta1}")
    if not 0.0 <= beta2 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {beta2}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not group["weight_decay"] >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
    if group.get("fused") and group.get("foreach"):
        raise RuntimeError("`fused` and `foreach` cannot both be True")


def check_grad(name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
    """Reject what the optimizers cannot handle, with an error that names the fix."""
    if grad.is_sparse:
        raise RuntimeError(
            f"{name} does not support sparse gradients (parameter of shape {tuple(param.shape)}): "
            "use dense gradients, e.g. nn.Embedding(..., sparse=False)"
        )
    if torch.is_complex(param) or torch.is_complex(grad):
        raise RuntimeError(
            f"{name} does not support complex parameters (shape {tuple(param.shape)}, "
            f"{param.dtype}): optimise a real view instead, e.g. nn.Parameter(torch.view_as_real(z))"
        )


def init_group(
    optimizer: Optimizer,
    group: dict[str, Any],
    keys: Sequence[str],
    init_state: Callable[[torch.Tensor, dict[str, Any], dict[str, Any]], None],
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[Any]]]:
    """The parameters of `group` that have a gradient, their gradients and their state, per key.

    Returns (params, grads, lists) with `lists[j][i] = state[params[i]].get(keys[j])` (None where a
    parameter has no such entry, e.g. the mask of a dense SPAM parameter). A parameter's state is
    created on its first gradient by `init_state(param, state, group)`, the lazy state of
    torch.optim; parameters whose grad is None are skipped (no state, counts unchanged).
    """
    name = type(optimizer).__name__
    params: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []
    lists: list[list[Any]] = [[] for _ in keys]
    for p in group["params"]:
        if p.grad is None:
            continue
        check_grad(name, p, p.grad)
        state = optimizer.state[p]
        if "step" not in state:
            init_state(p, state, group)
        params.append(p)
        grads.append(p.grad)
        for values, key in zip(lists, keys):
            values.append(state.get(key))
    return params, grads, lists


def choose_path(
    name: str, foreach: bool | None, fused: bool | None, tensors: Sequence[torch.Tensor]
) -> str:
    """'single', 'foreach' or 'fused' for local tensors that share one device.

    fused=None and foreach=None (the defaults): the fused Triton step for CUDA tensors when triton is
    installed, the foreach path everywhere else. An explicit flag is obeyed or raises.
    """
    if fused and foreach:
        raise RuntimeError(f"{name}: `fused` and `foreach` cannot both be True")
    if fused is None and foreach is None:
        fused = (
            bool(tensors)
            and all(t.is_cuda and t.dtype in FUSED_DTYPES and t.is_contiguous() for t in tensors)
            and triton_available()
        )
    if fused:
        bad = sorted({str(t.dtype) for t in tensors if t.dtype not in FUSED_DTYPES})
        if bad:
            raise TypeError(
                f"{name}(fused=True) runs on {[str(d) for d in FUSED_DTYPES]} tensors, got {bad}: "
                "pass fused=False"
            )
        if not all(t.is_contiguous() for t in tensors):
            raise TypeError(f"{name}(fused=True) needs contiguous parameters: pass fused=False")
        resolve_backend("triton", *tensors)  # raises an error naming the fix when it cannot run
        return "fused"
    return "single" if foreach is False else "foreach"


def group_by_device_and_dtype(tensors: Sequence[torch.Tensor]) -> dict[Any, list[int]]:
    """Indices of `tensors` grouped by (device, dtype) of their local shards, in order."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        local = local_tensor(t)
        groups[(local.device, local.dtype)].append(i)
    return dict(groups)


def slices(
    tensor_lists: Sequence[Sequence[torch.Tensor]],
) -> Iterator[tuple[list[int], list[list[torch.Tensor]]]]:
    """Buckets of matching slices of parallel lists of same-shaped tensors, for the foreach path.

    Yields (owners, lists): `lists[j][k]` is a flat slice of `tensor_lists[j][owners[k]]`. On CUDA
    one bucket holds every tensor whole (one multi-tensor launch per op). On CPU a bucket holds about
    CPU_SLICE_PER_THREAD * threads elements, small tensors packed together and large ones cut into
    slices; a tensor that is not contiguous in every list stays whole.
    """
    n = len(tensor_lists[0])
    if n == 0:
        return
    if tensor_lists[0][0].device.type != "cpu":
        yield list(range(n)), [list(ts) for ts in tensor_lists]
        return
    budget = CPU_SLICE_PER_THREAD * max(1, torch.get_num_threads())
    owners: list[int] = []
    lists: list[list[torch.Tensor]] = [[] for _ in tensor_lists]
    filled = 0
    for i in range(n):
        whole = [ts[i] for ts in tensor_lists]
        numel = whole[0].numel()
        if numel == 0:
            continue
        if not all(t.is_contiguous() for t in whole):
            pieces = [whole]
        else:
            flat = [t.view(-1) for t in whole]
            pieces = [list(p) for p in zip(*(f.split(budget) for f in flat))]
        for piece in pieces:
            size = piece[0].numel()
            if filled and filled + size > budget:
                yield owners, lists
                owners, lists, filled = [], [[] for _ in tensor_lists], 0
            owners.append(i)
            for j, t in enumerate(piece):
                lists[j].append(t)
            filled += size
    if owners:
        yield owners, lists


def all_reduce_per_tensor(values: torch.Tensor, params: Sequence[torch.Tensor], op: str) -> None:
    """In place: values[i], a statistic of the local shard of params[i], becomes that of the full tensor.

    One all-reduce per (mesh, placements) signature of DTensor parameters (FSDP2 shards every
    parameter the same way, so one collective per step and statistic); plain tensors are left alone.
    """
    reduce = all_reduce_max if op == "max" else all_reduce_sum
    signatures: dict[Any, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        if is_dtensor(p):
            signatures[(p.device_mesh, tuple(p.placements))].append(i)
    for idx in signatures.values():
        index = torch.tensor(idx, device=values.device)
        part = values.index_select(0, index)
        reduce(part, like=params[idx[0]])
        values.index_copy_(0, index, part)


def restore_state_dtypes(
    optimizer: torch.optim.Optimizer, state_dict: dict, keys: set[str]
) -> None:
    """Undo torch's cast of loaded state to the parameter's dtype and device for `keys`.

    `Optimizer.load_state_dict` casts every floating state tensor except "step" to its parameter's
    dtype: our counters (fp32 on CPU), fp32 statistics of bf16 parameters and boolean masks must keep
    the dtype (and, for counters, the device) they were saved with.
    """
    saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for saved_id, p in zip(saved_ids, params):
        saved = state_dict["state"].get(saved_id)
        if not saved:
            continue
        state = optimizer.state[p]
        for key in keys & saved.keys():
            value = saved[key]
            if torch.is_tensor(value) and torch.is_tensor(state.get(key)):
                device = value.device if key.endswith("step") else state[key].device
                state[key] = value.to(device=device, dtype=value.dtype, copy=True)
