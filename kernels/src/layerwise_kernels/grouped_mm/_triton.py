"""Triton grouped matmul: forward, input-gradient and weight-gradient kernels, and their autograd.Function.

Forward, for every group g with rows [s_g, e_g) (e_g = offsets[g], s_g = e_{g-1}):

    Y[s_g:e_g] = X[s_g:e_g] @ W[g]                        [rows_g, K] @ [K, N]

The kernel is persistent: a fixed grid of programs walks over the groups, and within each group
over its BLOCK_M x BLOCK_N output tiles, tile t going to program t mod (number of programs), the
count continuing from one group to the next so that small groups do not all land on program 0.
No host sync: the tile counts are read from `offsets` inside the kernel.

Backward, with dY the output gradient:
    dX[s_g:e_g] = dY[s_g:e_g] @ W[g]^T                    the forward kernel on W's transpose
    dW[g]       = X[s_g:e_g]^T @ dY[s_g:e_g]              [K, N], a reduction over the rows of g
dW has one tile grid per group; each program reduces over its group's rows in chunks of BLOCK_M,
in fp32, and writes zeros for an empty group. No atomics: the result is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable


@triton.jit
def _grouped_mm_kernel(
    X,
    W,
    Y,
    OFFSETS,
    n_groups,
    n_cols,
    n_inner,
    stride_xm,
    stride_xk,
    stride_wg,
    stride_wk,
    stride_wn,
    stride_ym,
    stride_yn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    tiles_n = tl.cdiv(n_cols, BLOCK_N)
    start = tl.load(OFFSETS) * 0  # int32 zero, typed like the loaded offsets
    tiles_before = start
    for g in range(n_groups):
        end = tl.load(OFFSETS + g)
        group_tiles = tl.cdiv(end - start, BLOCK_M) * tiles_n
        # First tile of this group owned by this program, counting tiles across groups.
        first = (pid - tiles_before % n_programs + n_programs) % n_programs
        for tile in range(first, group_tiles, n_programs):
            rows = start + (tile // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
            cols = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
            row_mask = rows < end
            col_mask = cols < n_cols
            # int64 offsets: rows * stride passes 2**31 for a few GB of activations.
            rows64 = rows.to(tl.int64)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, n_inner, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_mask = ks < n_inner
                a = tl.load(
                    X + rows64[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=row_mask[:, None] & k_mask[None, :],
                    other=0.0,
                )
                b = tl.load(
                    W + tl.cast(g, tl.int64) * stride_wg + ks[:, None] * stride_wk
                    + cols[None, :] * stride_wn,
                    mask=k_mask[:, None] & col_mask[None, :],
                    other=0.0,
                )  # fmt: skip
                if UPCAST:
                    # The interpreter computes bf16/fp16 on raw bits: multiply in fp32 there.
                    a = a.to(tl.float32)
                    b = b.to(tl.float32)
                acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
            tl.store(
                Y + rows64[:, None] * stride_ym + cols[None, :] * stride_yn,
                acc.to(Y.dtype.element_ty),
                mask=row_mask[:, None] & col_mask[None, :],
            )
        tiles_before += group_tiles
        start = end


@triton.jit
def _grouped_mm_weight_grad_kernel(
    X,
    DY,
    DW,
    OFFSETS,
    n_groups,
    n_inner,
    n_cols,
    stride_xm,
    stride_xk,
    stride_dym,
    stride_dyn,
    stride_dwg,
    stride_dwk,
    stride_dwn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    tiles_k = tl.cdiv(n_inner, BLOCK_K)
    tiles_n = tl.cdiv(n_cols, BLOCK_N)
    for tile in range(pid, n_groups * tiles_k * tiles_n, n_programs):
        g = tile // (tiles_k * tiles_n)
        ks = ((tile // tiles_n) % tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        cols = (tile % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
        k_mask = ks < n_inner
        col_mask = cols < n_cols
        end = tl.load(OFFSETS + g)
        start = tl.load(OFFSETS + g - 1, mask=g > 0, other=0)
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for m0 in range(start, end, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            row_mask = rows < end
            rows64 = rows.to(tl.int64)
            xt = tl.load(
                X + rows64[None, :] * stride_xm + ks[:, None] * stride_xk,
                mask=k_mask[:, None] & row_mask[None, :],
                other=0.0,
            )  # [BLOCK_K, BLOCK_M]: x^T
            dy = tl.load(
                DY + rows64[:, None] * stride_dym + cols[None, :] * stride_dyn,
                mask=row_mask[:, None] & col_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                xt = xt.to(tl.float32)
                dy = dy.to(tl.float32)
            acc = tl.dot(xt, dy, acc, input_precision=INPUT_PRECISION)
        tl.store(
            DW
            + tl.cast(g, tl.int64) * stride_dwg
            + ks[:, None] * stride_dwk
            + cols[None, :] * stride_dwn,
            acc.to(DW.dtype.element_ty),
            mask=k_mask[:, None] & col_mask[None, :],
        )


def _check_runnable(x: torch.Tensor) -> None:
    # Kernels decorated while TRITON_INTERPRET was unset are GPU kernels; on CPU tensors Triton would
    # only say "0 active drivers".
    if x.device.type != "cuda" and isinstance(_grouped_mm_kernel, triton.JITFunction):
        raise RuntimeError(
            f"grouped_mm's Triton kernels were compiled for the GPU but got tensors on {x.device}: "
            "set TRITON_INTERPRET=1 before the first Triton call of the process, or pass "
            "backend='torch'"
        )


def _launch_config(device: torch.device, dtype: torch.dtype) -> dict:
    """Tile sizes, warps, the program budget and the dot precision for one device."""
    # fp32 inputs multiply in IEEE fp32 (torch's default for fp32 matmuls: TF32 off).
    precision = "ieee" if dtype == torch.float32 else "tf32"
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "max_programs": sms * 4,
                "UPCAST": False, "INPUT_PRECISION": precision}  # fmt: skip
    # Interpreter: a program costs milliseconds, a wide tile almost nothing (numpy); still more
    # than one program and one tile per program whenever the problem allows, so all loops run.
    return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "num_warps": 4, "max_programs": 3,
            "UPCAST": True, "INPUT_PRECISION": "ieee"}  # fmt: skip


def _matmul(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """[rows, K] x [groups, K, N] -> [rows, N] in x's dtype; w may have any strides."""
    rows, n_inner = x.shape
    n_groups, _, n_cols = w.shape
    y = torch.empty(rows, n_cols, device=x.device, dtype=x.dtype)
    if rows == 0 or n_cols == 0:
        return y
    cfg = _launch_config(x.device, x.dtype)
    max_programs = cfg.pop("max_programs")
    # Output tiles: at most one partial row tile per group on top of the full ones.
    tiles = (triton.cdiv(rows, cfg["BLOCK_M"]) + n_groups) * triton.cdiv(n_cols, cfg["BLOCK_N"])
    programs = max(1, min(max_programs, tiles))
    _grouped_mm_kernel[(programs,)](
        x, w, y, offsets, n_groups, n_cols, n_inner,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2), y.stride(0), y.stride(1),
        **cfg,
    )  # fmt: skip
    return y


def _weight_grad(x: torch.Tensor, dy: torch.Tensor, offsets: torch.Tensor, n_groups: int):
    """dW[g] = x[rows of g]^T @ dy[rows of g], [groups, K, N] in fp32."""
    n_inner, n_cols = x.shape[1], dy.shape[1]
    dw = torch.empty(n_groups, n_inner, n_cols, device=x.device, dtype=torch.float32)
    cfg = _launch_config(x.device, x.dtype)
    max_programs = cfg.pop("max_programs")
    tiles = n_groups * triton.cdiv(n_inner, cfg["BLOCK_K"]) * triton.cdiv(n_cols, cfg["BLOCK_N"])
    programs = max(1, min(max_programs, tiles))
    _grouped_mm_weight_grad_kernel[(programs,)](
        x, dy, dw, offsets, n_groups, n_inner, n_cols,
        x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), dw.stride(0), dw.stride(1),
        dw.stride(2), **cfg,
    )  # fmt: skip
    return dw


class GroupedMMFunction(torch.autograd.Function):
    """Autograd wrapper: the forward saves x, weight and offsets; the backward runs two kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        _check_runnable(x)
        offsets = offsets.to(torch.int32)
        ctx.save_for_backward(x, weight, offsets)
        return _matmul(x, weight, offsets)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight, offsets = ctx.saved_tensors
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _matmul(dy, weight.transpose(1, 2), offsets)
        if ctx.needs_input_grad[1]:
            if x.shape[0] == 0:
                dw = torch.zeros_like(weight)
            else:
                dw = _weight_grad(x, dy, offsets, weight.shape[0]).to(weight.dtype)
        return dx, dw, None
