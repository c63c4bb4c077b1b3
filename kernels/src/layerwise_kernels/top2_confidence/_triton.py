"""Triton top-2 confidence: one pass over the vocabulary with an online softmax.

Each program walks over tiles of BLOCK_M rows (strided by the number of programs, so the grid stays
small) and, for each tile, over the vocabulary in chunks of BLOCK_V columns, keeping per row

    m  = running maximum,          i  = its first column,
    m2 = running second largest,   s  = sum_v exp(z_v - m)  (rescaled when m grows).

A chunk with maximum c (first column j) and second largest c2 updates them as

    c > m:   m2 <- max(m, c2),  i <- j,  m <- c
    else:    m2 <- max(m2, c)               (c == m gives a gap of 0, and keeps the first column)
    s <- s * exp(m_old - m_new) + sum_chunk exp(z - m_new)

and at the end prob = exp(m - m) / s = 1 / s and gap = m - m2. Nothing of size V is written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _top2_confidence_kernel(
    X,
    TOKEN,
    PROB,
    GAP,
    n_rows,
    n_cols,
    stride_x,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    neg_inf = float("-inf")
    for row_start in range(pid * BLOCK_M, n_rows, n_programs * BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < n_rows
        # int64 offsets: rows * V passes 2**31 for a few thousand rows of a 126k vocabulary.
        rows64 = rows.to(tl.int64)
        m = tl.full([BLOCK_M], neg_inf, tl.float32)
        m2 = tl.full([BLOCK_M], neg_inf, tl.float32)
        s = tl.zeros([BLOCK_M], dtype=tl.float32)
        idx = tl.zeros([BLOCK_M], dtype=tl.int64)
        for col_start in range(0, n_cols, BLOCK_V):
            cols = col_start + tl.arange(0, BLOCK_V)
            mask = row_mask[:, None] & (cols < n_cols)[None, :]
            z = tl.load(X + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=neg_inf)
            z = z.to(tl.float32)
            c = tl.max(z, axis=1)
            # First column of the chunk maximum (torch.argmax picks the first on ties).
            j = tl.min(tl.where(z == c[:, None], cols[None, :], n_cols + BLOCK_V), axis=1)
            c2 = tl.max(tl.where(cols[None, :] == j[:, None], neg_inf, z), axis=1)
            better = c > m
            m2 = tl.where(better, tl.maximum(m, c2), tl.maximum(m2, c))
            idx = tl.where(better, j.to(tl.int64), idx)
            # A row still all -inf (or a padding row of the tile) subtracts 0 instead of -inf:
            # exp(-inf - -inf) would be NaN, exp(-inf - 0) is the 0 it should be.
            m_new = tl.maximum(m, c)
            safe = tl.where(m_new == neg_inf, 0.0, m_new)
            s = s * tl.exp(m - safe) + tl.sum(tl.exp(z - safe[:, None]), axis=1)
            m = m_new
        tl.store(TOKEN + rows, idx, mask=row_mask)
        tl.store(PROB + rows, 1.0 / tl.where(row_mask, s, 1.0), mask=row_mask)
        tl.store(GAP + rows, tl.where(row_mask, m, 0.0) - m2, mask=row_mask)


def _launch_config(n_rows: int, n_cols: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_V, programs, num_warps) for a [n_rows, n_cols] problem."""
    if device.type == "cuda":
        # One row per tile, 4K-column chunks: a 126k vocabulary is 31 chunks, each a coalesced load.
        block_v = min(4096, triton.next_power_of_2(n_cols))
        block_m = 1
        max_programs = torch.cuda.get_device_properties(device).multi_processor_count * 8
        num_warps = 8 if block_v >= 2048 else 4
    else:
        # Interpreter: a program costs milliseconds, a wide tile almost nothing (numpy). Still more
        # than one chunk per row and one tile per program whenever the shape allows, so loops run.
        block_v = min(32768, triton.next_power_of_2(n_cols))
        block_m = max(1, min(8, 65536 // block_v))
        max_programs = 2
        num_warps = 4
    programs = max(1, min(max_programs, triton.cdiv(n_rows, block_m)))
    return block_m, block_v, programs, num_warps


def top2_confidence_triton(
    logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token int64, prob fp32, gap fp32) with logits' leading shape."""
    if logits.device.type != "cuda" and isinstance(_top2_confidence_kernel, triton.JITFunction):
        # Kernels decorated while TRITON_INTERPRET was unset are GPU kernels: on CPU tensors Triton
        # would only say "0 active drivers".
        raise RuntimeError(
            f"top2_confidence's Triton kernel was compiled for the GPU but got tensors on "
            f"{logits.device}: set TRITON_INTERPRET=1 before the first Triton call of the process, "
            "or pass backend='torch'"
        )
    lead, n_cols = logits.shape[:-1], logits.shape[-1]
    rows = logits.reshape(-1, n_cols)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    n_rows = rows.shape[0]
    token = torch.empty(n_rows, dtype=torch.int64, device=logits.device)
    prob = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    gap = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows:
        block_m, block_v, programs, num_warps = _launch_config(n_rows, n_cols, logits.device)
        _top2_confidence_kernel[(programs,)](
            rows, token, prob, gap, n_rows, n_cols, rows.stride(0),
            BLOCK_M=block_m, BLOCK_V=block_v, num_warps=num_warps,
        )  # fmt: skip
    return token.view(lead), prob.view(lead), gap.view(lead)
