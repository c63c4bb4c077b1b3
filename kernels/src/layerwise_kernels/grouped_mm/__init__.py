"""Grouped matrix multiply: rows of x sorted by group, one weight matrix per group.

    out[r] = x[r] @ weight[g(r)],   g(r) = the group g with offsets[g - 1] <= r < offsets[g]

The expert computation of a mixture-of-experts layer once its tokens are sorted by expert
(Shazeer et al., "Outrageously Large Neural Networks", ICLR 2017; the grouped GEMM formulation of
Gale et al., "MegaBlocks", MLSys 2023): one call per projection instead of a loop over experts.
"""

from __future__ import annotations

import torch

from layerwise_kernels._backend import resolve_backend
from layerwise_kernels.grouped_mm.naive import grouped_mm_naive

__all__ = ["grouped_mm", "grouped_mm_naive"]

# The kernels compute in fp32 and store in x's dtype: wider inputs would silently lose precision.
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> None:
    if x.dim() != 2 or weight.dim() != 3 or x.shape[1] != weight.shape[1] or weight.shape[0] == 0:
        raise ValueError(
            "grouped_mm needs x of shape [rows, in] and weight of shape [groups, in, out], got "
            f"x {tuple(x.shape)} and weight {tuple(weight.shape)} (groups >= 1): pass a "
            "[groups, out, in] (nn.Linear-style) weight as weight.transpose(1, 2)"
        )
    if x.dtype != weight.dtype:
        raise TypeError(
            f"grouped_mm needs x and weight of one dtype, got {x.dtype} and {weight.dtype}: "
            "cast one of them with .to()"
        )
    if offsets.dim() != 1 or offsets.shape[0] != weight.shape[0] or offsets.is_floating_point():
        raise ValueError(
            f"grouped_mm needs integer offsets of shape [groups] = [{weight.shape[0]}] (the "
            f"cumulative row counts, e.g. counts.cumsum(0)), got {offsets.dtype} of shape "
            f"{tuple(offsets.shape)}"
        )
    if offsets.device.type != "cuda" and offsets.numel() > 0:
        # Checking values costs a host sync on a GPU; on CPU it is free.
        ends = offsets.to(torch.int64)
        if int(ends[-1]) != x.shape[0] or bool((ends.diff() < 0).any()) or int(ends[0]) < 0:
            raise ValueError(
                f"grouped_mm needs non-decreasing offsets ending at the row count {x.shape[0]}, "
                f"got {offsets.tolist()}: build them as counts.cumsum(0) over rows sorted by group"
            )


def grouped_mm(
    x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Multiply each contiguous group of rows of x by its own matrix.

        out[s_g : e_g] = x[s_g : e_g] @ weight[g],   e_g = offsets[g],  s_g = e_{g-1},  s_0 = 0

    The expert step of a sort-based mixture-of-experts dispatch (rows = token copies sorted by
    expert, groups = experts). Empty groups are allowed; their weight gradient is zero.

    Args:
        x: [rows, in], rows sorted by group; fp32/bf16/fp16 (fp64 on the torch backend only).
        weight: [groups, in, out] of x's dtype; any strides (an nn.Linear-style [groups, out, in]
            parameter goes in as `weight.transpose(1, 2)` without a copy).
        offsets: [groups] integer cumulative row counts; offsets[-1] must equal rows. Values are
            checked on CPU only (on a GPU the check would cost a host sync).
        backend: "auto" (Triton for CUDA tensors when triton is installed, else torch), "torch"
            (the loop reference in `naive.py`), or "triton" (CUDA tensors, or CPU tensors under
            TRITON_INTERPRET=1).

    Returns:
        [rows, out] in x's dtype; differentiable with respect to x and weight. The Triton kernel
        accumulates in fp32 (IEEE fp32 products for fp32 inputs, no TF32).
    """
    _check(x, weight, offsets)
    chosen = resolve_backend(backend, x, weight, offsets)
    if chosen == "triton" and x.dtype not in _TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(
                f"grouped_mm's Triton kernel takes x in {_TRITON_DTYPES}, got {x.dtype}: "
                "pass backend='torch' or backend='auto'"
            )
        chosen = "torch"
    if chosen == "torch":
        return grouped_mm_naive(x, weight, offsets)
    from layerwise_kernels.grouped_mm._triton import GroupedMMFunction

    return GroupedMMFunction.apply(x, weight, offsets)
