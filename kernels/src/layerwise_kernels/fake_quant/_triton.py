"""Triton fake quantisation: one fused kernel per call (absmax, scale, round, rescale), identity backward.

Rows are the groups of the last dim (the flattened tensor viewed as [rows, group]); each program walks
over tiles of BLOCK_M rows, strided by the number of programs, with the whole group in one tile
(masked up to a power of two). fp32 arithmetic; the result is stored in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A group must fit in one tile.
MAX_GROUP = 65536


@triton.jit
def _round_half_even(a):
    # For a >= 0. floor and a - floor(a) are exact, unlike floor(a + 0.5), which rounds 0.49999997 up.
    f = tl.floor(a)
    frac = a - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    return tl.where((frac > 0.5) | ((frac == 0.5) & odd), f + 1.0, f)


@triton.jit
def _fake_quant_kernel(
    X, Y, n_rows, n_cols, qmax, FP4: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    for row_start in range(pid * BLOCK_M, n_rows, tl.num_programs(0) * BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        scale = tl.max(tl.abs(x), axis=1) / qmax
        u = x / tl.where(scale > 0, scale, 1.0)[:, None]
        a = tl.abs(u)
        if FP4:
            # e2m1: spacing 0.5 below 2, 1 in [2, 4), 2 in [4, 6]; ties to the even mantissa
            spacing = tl.where(a < 2.0, 0.5, tl.where(a < 4.0, 1.0, 2.0))
            q = tl.minimum(_round_half_even(a / spacing) * spacing, 6.0)
        else:
            q = tl.minimum(_round_half_even(a), qmax)
        q = tl.where(u < 0, -q, q)
        tl.store(Y + offs, (q * scale[:, None]).to(Y.dtype.element_ty), mask=mask)


def _check_runnable(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and isinstance(_fake_quant_kernel, triton.JITFunction):
        raise RuntimeError(
            f"fake_quant's Triton kernel was compiled for the GPU but got a tensor on {x.device}: "
            "set TRITON_INTERPRET=1 before the first Triton call of the process, or pass "
            "backend='torch'"
        )


def fake_quant_fwd(x: torch.Tensor, qmax: float, fp4: bool, group: int) -> torch.Tensor:
    _check_runnable(x)
    if group > MAX_GROUP:
        raise ValueError(
            f"fake_quant's Triton kernel holds a whole group in one tile, up to {MAX_GROUP} "
            f"elements; got {group}: pass group_size= or backend='torch'"
        )
    rows = x.contiguous().view(-1, group)
    y = torch.empty_like(rows)
    n_rows = rows.shape[0]
    block_n = triton.next_power_of_2(group)
    if x.device.type == "cuda":
        block_m = max(1, min(64, 4096 // block_n))
        max_programs = torch.cuda.get_device_properties(x.device).multi_processor_count * 4
        num_warps = max(1, min(16, block_m * block_n // 512))
    else:
        block_m = max(1, min(16, 16384 // block_n))
        max_programs, num_warps = 4, 4
    programs = max(1, min(max_programs, triton.cdiv(n_rows, block_m)))
    if n_rows:
        _fake_quant_kernel[(programs,)](
            rows, y, n_rows, group, qmax, FP4=fp4, BLOCK_M=block_m, BLOCK_N=block_n,
            num_warps=num_warps,
        )  # fmt: skip
    return y.view(x.shape)


class FakeQuantFunction(torch.autograd.Function):
    """Fused fake quantisation forward; straight-through (identity) backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, qmax: float, fp4: bool, group: int) -> torch.Tensor:
        return fake_quant_fwd(x, qmax, fp4, group)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return dy, None, None, None
