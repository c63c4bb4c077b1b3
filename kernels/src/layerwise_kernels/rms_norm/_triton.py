"""Triton RMSNorm: fused forward and backward kernels and the autograd.Function that runs them.

Rows are the flattened leading dims of x, columns its last dim (masked up to a power of two). Each
program walks over tiles of BLOCK_M rows, strided by the number of programs, so the grid stays small:
on a GPU about one wave of programs, under the interpreter a handful (each program costs ms there).

Forward (per row, in fp32):    r = 1 / sqrt(mean(x^2) + eps),  n = x * r,
                               y = cast(n, x.dtype) * g,       g = (offset + w) * scale
Backward, with dy the output gradient and gy = dy * g:
                               dx = r * (gy - n * mean(gy * n))
                               dw = scale * sum_rows(dy * cast(n, x.dtype))
dx treats the cast of n to x.dtype as the identity (as torch autograd does for `.to`). dw is summed
in fp32: each program accumulates its rows into one row of a [programs, hidden] buffer, which torch
then sums; no atomics, so the result is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

# A row must fit in one tile: 64K fp32 columns is 256 KiB per row, beyond what a program can hold.
MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_fwd_kernel(
    X,
    W,
    Y,
    RSTD,
    n_rows,
    n_cols,
    stride_x,
    stride_y,
    eps,
    scale,
    offset,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    gain = (tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) + offset) * scale
    for row_start in range(pid * BLOCK_M, n_rows, n_programs * BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        # int64 offsets: rows * stride passes 2**31 for a few GB of activations.
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
        # Round the normalised x to the input dtype before the weight, as HF LlamaRMSNorm does.
        normed = (x * rstd[:, None]).to(Y.dtype.element_ty).to(tl.float32)
        y = normed * gain[None, :]
        tl.store(
            Y + rows64[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask
        )
        tl.store(RSTD + rows, rstd, mask=row_mask)


@triton.jit
def _rms_norm_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DX,
    DW_PARTIAL,
    n_rows,
    n_cols,
    stride_dy,
    stride_x,
    stride_dx,
    scale,
    offset,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    gain = (tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32) + offset) * scale
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for row_start in range(pid * BLOCK_M, n_rows, n_programs * BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        # int64 offsets: rows * stride passes 2**31 for a few GB of activations.
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        dy = tl.load(DY + rows64[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
        normed = x * rstd[:, None]
        # The weight saw the normalised x rounded to the input dtype; so does its gradient.
        dw_acc += tl.sum(dy * normed.to(X.dtype.element_ty).to(tl.float32), axis=0)
        gy = dy * gain[None, :]
        dot = tl.sum(gy * normed, axis=1) / n_cols
        dx = (gy - normed * dot[:, None]) * rstd[:, None]
        tl.store(
            DX + rows64[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask
        )
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw_acc * scale, mask=col_mask)


def _launch_config(n_rows: int, n_cols: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, programs, num_warps) for a [n_rows, n_cols] problem."""
    if n_cols > MAX_HIDDEN:
        raise ValueError(
            f"rms_norm's Triton kernel holds a whole row in one tile, up to {MAX_HIDDEN} columns; "
            f"got {n_cols}: pass backend='torch'"
        )
    block_n = triton.next_power_of_2(n_cols)
    if device.type == "cuda":
        # Tiles of ~4K elements: one row per tile for LLM hidden sizes, several for narrow rows.
        block_m = max(1, min(64, 4096 // block_n))
        max_programs = torch.cuda.get_device_properties(device).multi_processor_count * 4
        num_warps = max(1, min(16, block_m * block_n // 512))
    else:
        # Interpreter: a program costs milliseconds, a wide tile almost nothing (numpy). Still more
        # than one program and one tile per program whenever the rows allow, so both loops run.
        block_m = max(1, min(16, 16384 // block_n))
        max_programs = 4
        num_warps = 4
    programs = max(1, min(max_programs, triton.cdiv(n_rows, block_m)))
    return block_m, block_n, programs, num_warps


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """View of t as [rows, hidden] with unit column stride (copies only when it must)."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _check_runnable(x: torch.Tensor) -> None:
    # Kernels decorated while TRITON_INTERPRET was unset are GPU kernels; on CPU tensors Triton would
    # only say "0 active drivers".
    if x.device.type != "cuda" and isinstance(_rms_norm_fwd_kernel, triton.JITFunction):
        raise RuntimeError(
            f"rms_norm's Triton kernels were compiled for the GPU but got tensors on {x.device}: "
            "set TRITON_INTERPRET=1 before the first Triton call of the process, or pass "
            "backend='torch'"
        )


def rms_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, eps: float, scale: float, offset: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (y as [rows, hidden], x as [rows, hidden], rstd [rows] in fp32)."""
    _check_runnable(x)
    x2 = _as_rows(x)
    n_rows, n_cols = x2.shape
    y = torch.empty_like(x2, memory_format=torch.contiguous_format)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block_m, block_n, programs, num_warps = _launch_config(n_rows, n_cols, x.device)
    _rms_norm_fwd_kernel[(programs,)](
        x2, weight.contiguous(), y, rstd, n_rows, n_cols, x2.stride(0), y.stride(0),
        eps, scale, offset, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )  # fmt: skip
    return y, x2, rstd


def rms_norm_bwd(
    dy: torch.Tensor,
    x2: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    scale: float,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (dx as [rows, hidden] in x's dtype, dw [hidden] in weight's dtype)."""
    dy2 = _as_rows(dy)
    n_rows, n_cols = x2.shape
    dx = torch.empty_like(x2, memory_format=torch.contiguous_format)
    block_m, block_n, programs, num_warps = _launch_config(n_rows, n_cols, x2.device)
    dw_partial = torch.empty(programs, n_cols, dtype=torch.float32, device=x2.device)
    _rms_norm_bwd_kernel[(programs,)](
        dy2, x2, weight.contiguous(), rstd, dx, dw_partial, n_rows, n_cols,
        dy2.stride(0), x2.stride(0), dx.stride(0), scale, offset,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )  # fmt: skip
    return dx, dw_partial.sum(0).to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    """Autograd wrapper: the forward saves x and the per-row 1/rms, the backward is one kernel."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, scale: float, offset: float
    ) -> torch.Tensor:
        y, x2, rstd = rms_norm_fwd(x, weight, eps, scale, offset)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.scale, ctx.offset, ctx.x_shape = scale, offset, x.shape
        return y.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_bwd(dy, x2, weight, rstd, ctx.scale, ctx.offset)
        dx = dx.view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        dw = dw if ctx.needs_input_grad[1] else None
        return dx, dw, None, None, None
