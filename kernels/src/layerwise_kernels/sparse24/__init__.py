"""2:4 activation sparsity (ELAS): keep the 2 largest-magnitude entries of every 4 consecutive features.

    groups of 4 along the feature dim, a = |y|:
    c_i = #{j : a_j > a_i or (a_j == a_i and j < i)},   M_i = (c_i < 2),   S(y) = y * M

ELAS (Li et al., "ELAS: Efficient Pre-Training of Low-Rank Large Language Models via 2:4 Activation
Sparsity", arXiv 2605.03667) applies S to the squared-ReLU output of the FFN, s = S(relu(y1)^2),
before the down projection, whose GEMM s @ W is then a 2:4 sparse GEMM (NVIDIA sparse tensor cores,
Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv 2104.08378; Haziza et al.,
"Accelerating Transformer Inference and Training with 2:4 Activation Sparsity", arXiv 2503.16672).

The paper leaves ties open; here the rank order is (|v| descending, index ascending), so every group
keeps exactly two slots and a compressor never sees three. NaN ranks above every number (+-inf
included): a NaN is always kept, so it reaches the loss rather than being hidden. Both backends
follow this; the torch reference (`naive.py`) is the ground truth.

Ops: `mask_24`, `sparsify_24` (any dim), `relu2_sparsify_24` (fused squared ReLU + select, masked
or compact output, optional statistics), `compress_24` / `decompress_24` (compact form),
`sparse24_mm` (torch's semi-structured sparse GEMM on CUDA, dense elsewhere; `mm.py`).
"""

from __future__ import annotations

import torch

from layerwise_kernels._backend import resolve_backend
from layerwise_kernels.sparse24.mm import (
    SPARSE24_MM_BACKENDS,
    semi_structured_supported,
    sparse24_mm,
)
from layerwise_kernels.sparse24.naive import (
    Relu2Sparse24,
    Sparse24Stats,
    check_groups,
    compress_24,
    decompress_24,
    mask_24_naive,
    relu2_sparsify_24_naive,
    sparse24_stats,
    sparsify_24_naive,
)

__all__ = [
    "SPARSE24_MM_BACKENDS",
    "Relu2Sparse24",
    "Sparse24Stats",
    "compress_24",
    "decompress_24",
    "mask_24",
    "mask_24_naive",
    "relu2_sparsify_24",
    "relu2_sparsify_24_naive",
    "semi_structured_supported",
    "sparse24_mm",
    "sparse24_stats",
    "sparsify_24",
    "sparsify_24_naive",
]

# The kernels compare and square in fp32 (exact for these inputs) and store in the input's dtype.
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OUTPUTS = ("masked", "compact")


def _choose(op: str, backend: str, y: torch.Tensor) -> str:
    chosen = resolve_backend(backend, y)
    if chosen == "triton" and y.dtype not in _TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(
                f"{op}'s Triton kernel takes {_TRITON_DTYPES}, got {y.dtype}: pass "
                "backend='torch' or backend='auto'"
            )
        chosen = "torch"
    return chosen


def mask_24(y: torch.Tensor, dim: int = -1, backend: str = "auto") -> torch.Tensor:
    """Bool mask of the 2 kept slots of every group of 4 consecutive entries of `y` along `dim`.

        M_i = (#{j : |y_j| > |y_i| or (|y_j| == |y_i| and j < i)} < 2)     (NaN ranks first)

    Args:
        y: any shape, size along `dim` a multiple of 4; fp32/bf16/fp16 (any dtype on torch).
        dim: the grouped (feature / reduction) dim.
        backend: "auto" (Triton for CUDA tensors when triton is installed, else torch), "torch"
            (`naive.py`) or "triton" (CUDA, or CPU under TRITON_INTERPRET=1).

    Returns:
        bool tensor of y's shape with exactly two True per group.
    """
    if y.dim() == 0:
        raise ValueError("mask_24 needs a tensor with at least one dim of a size divisible by 4")
    check_groups(y.shape[dim], "mask_24")
    if _choose("mask_24", backend, y) == "torch":
        return mask_24_naive(y, dim)
    return _select_triton(y, dim)[1]


def sparsify_24(
    y: torch.Tensor, dim: int = -1, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(torch.where(M, y, 0), M) with M = mask_24(y, dim): S(y), kept values bitwise unchanged.

    Idempotent (S(S(y)) = S(y)) and scale-equivariant (S(c y) = c S(y) for c > 0). Args as
    `mask_24`. Not differentiable (sparse_ft's ELAS FFN defines the backward).
    """
    if y.dim() == 0:
        raise ValueError(
            "sparsify_24 needs a tensor with at least one dim of a size divisible by 4"
        )
    check_groups(y.shape[dim], "sparsify_24")
    if _choose("sparsify_24", backend, y) == "torch":
        with torch.no_grad():
            return sparsify_24_naive(y, dim)
    return _select_triton(y, dim)


def _select_triton(y: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    from layerwise_kernels.sparse24._triton import select_24_triton

    moved = y.movedim(dim, -1)
    res = select_24_triton(moved, relu2=False, out="masked", stats=False)
    return res.values.movedim(-1, dim), res.mask.movedim(-1, dim)


def relu2_sparsify_24(
    y1: torch.Tensor,
    *,
    out: str = "masked",
    stats: bool = False,
    backend: str = "auto",
) -> Relu2Sparse24:
    """Fused squared ReLU and 2:4 select along the last dim: s = S(relu(y1)^2) (ELAS FFN, §1.2).

    v = relu(y1)^2 is computed in fp32 for any input dtype (no fp16 overflow above |y1| ~ 256), the
    selection ranks the fp32 v, and the kept values are cast once to y1.dtype. relu(NaN) = NaN.

    Args:
        y1: [..., F] up-projection output, F % 4 == 0, fp32/bf16/fp16 (fp64 on torch); any leading
            shape (flattened to rows), any row stride.
        out: "masked" (dense [..., F] values of y1.dtype, zeros at dropped slots, plus the bool
            mask) or "compact" (values [..., F/2], the kept values of each group in slot order,
            and uint8 indices [..., F/4], byte = i0 | (i1 << 2) with i0 < i1 the kept slots).
        stats: also return `Sparse24Stats` (counts and fp32 masses before / after the select).
        backend: as `mask_24`.

    Returns:
        `Relu2Sparse24(values, mask, indices, stats)`. Not differentiable.
    """
    if out not in OUTPUTS:
        raise ValueError(f"relu2_sparsify_24: out must be one of {OUTPUTS}, got {out!r}")
    if y1.dim() == 0:
        raise ValueError("relu2_sparsify_24 needs y1 [..., F] with F % 4 == 0, got a 0-dim tensor")
    check_groups(y1.shape[-1], "relu2_sparsify_24")
    with torch.no_grad():
        if _choose("relu2_sparsify_24", backend, y1) == "torch":
            return relu2_sparsify_24_naive(y1, out=out, stats=stats)
        from layerwise_kernels.sparse24._triton import select_24_triton

        return select_24_triton(y1, relu2=True, out=out, stats=stats)
