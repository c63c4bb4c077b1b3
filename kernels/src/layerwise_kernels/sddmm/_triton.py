"""Triton sampled dense-dense matmul: out[i] = sum_j a[rows[i], j] * b[j, cols[i]].

Each program takes tiles of BLOCK_S sampled entries, strided by the number of programs (a small grid:
about one wave on a GPU, a handful under the interpreter where each program costs milliseconds), and
walks the shared dimension K in chunks of BLOCK_K: it gathers the [BLOCK_S, BLOCK_K] slices of a's
rows and b's columns, multiplies them in fp32 and reduces over K. Any strides are allowed (the
gradient use passes a = dy^T, a transposed view), offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sddmm_kernel(
    A,
    B,
    ROWS,
    COLS,
    OUT,
    n_samples,
    n_inner,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    for start in range(pid * BLOCK_S, n_samples, n_programs * BLOCK_S):
        offs = start + tl.arange(0, BLOCK_S)
        s_mask = offs < n_samples
        rows = tl.load(ROWS + offs, mask=s_mask, other=0).to(tl.int64)
        cols = tl.load(COLS + offs, mask=s_mask, other=0).to(tl.int64)
        acc = tl.zeros([BLOCK_S], dtype=tl.float32)
        for k0 in range(0, n_inner, BLOCK_K):
            ks = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            mask = s_mask[:, None] & (ks < n_inner)[None, :]
            a = tl.load(
                A + rows[:, None] * stride_am + ks[None, :] * stride_ak, mask=mask, other=0.0
            )
            b = tl.load(
                B + ks[None, :] * stride_bk + cols[:, None] * stride_bn, mask=mask, other=0.0
            )
            # 16-bit inputs are widened before the product (the interpreter's 16-bit math is wrong).
            acc += tl.sum(a.to(tl.float32) * b.to(tl.float32), axis=1)
        tl.store(OUT + offs, acc, mask=s_mask)


def _launch_config(n_samples: int, n_inner: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_S, BLOCK_K, programs, num_warps) for k sampled entries of a product with inner dim K."""
    block_k = min(128, triton.next_power_of_2(max(n_inner, 16)))
    if device.type == "cuda":
        block_s = 32
        max_programs = torch.cuda.get_device_properties(device).multi_processor_count * 8
        num_warps = 4
    else:
        # Interpreter: wide tiles cost little (numpy), programs cost milliseconds each.
        block_s = 64
        max_programs = 4
        num_warps = 4
    programs = max(1, min(max_programs, triton.cdiv(n_samples, block_s)))
    return block_s, block_k, programs, num_warps


def sddmm_triton(
    a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Launch the kernel; returns fp32 [k]."""
    if a.device.type != "cuda" and isinstance(_sddmm_kernel, triton.JITFunction):
        raise RuntimeError(
            f"sddmm's Triton kernel was compiled for the GPU but got tensors on {a.device}: set "
            "TRITON_INTERPRET=1 before the first Triton call of the process, or pass backend='torch'"
        )
    n_samples = rows.shape[0]
    out = torch.empty(n_samples, dtype=torch.float32, device=a.device)
    if n_samples == 0:
        return out
    rows = rows.contiguous()
    cols = cols.contiguous()
    block_s, block_k, programs, num_warps = _launch_config(n_samples, a.shape[1], a.device)
    _sddmm_kernel[(programs,)](
        a, b, rows, cols, out, n_samples, a.shape[1],
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        BLOCK_S=block_s, BLOCK_K=block_k, num_warps=num_warps,
    )  # fmt: skip
    return out
