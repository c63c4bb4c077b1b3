"""Pure-torch sampled dense-dense matmul: the reference the Triton kernel is tested against.

    out[i] = (a @ b)[rows[i], cols[i]] = sum_j a[rows[i], j] * b[j, cols[i]]

The product is formed one band of rows at a time (dense matmul of the band, then a gather), so the
dense [M, N] result never exists: the transient is at most `max_block_elements` fp32 values. That
keeps the op's memory O(k + band) while using BLAS for the arithmetic, which on CPU is much faster
than gathering a K-long row and column per sampled entry.
"""

from __future__ import annotations

import torch

# 2**22 fp32 values = 16 MiB: one band of the dense product.
DEFAULT_BLOCK_ELEMENTS = 2**22


def sddmm_naive(
    a: torch.Tensor,
    b: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    max_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """out[i] = sum_j a[rows[i], j] * b[j, cols[i]] for a [M, K], b [K, N]; returns [k].

    Accumulates in fp32 (fp64 for fp64 inputs) and returns that dtype.
    """
    n_rows, n_cols = a.shape[0], b.shape[1]
    acc = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    out = torch.empty(rows.shape[0], dtype=acc, device=a.device)
    if rows.numel() == 0:
        return out
    rows = rows.long()
    cols = cols.long()
    if bool((rows[1:] < rows[:-1]).any()):
        order = torch.argsort(rows, stable=True)
        rows, cols = rows[order], cols[order]
    else:
        order = None
    a32, b32 = a.to(acc), b.to(acc)
    band = max(1, max_block_elements // max(1, n_cols))
    starts = torch.arange(0, n_rows + band, band, device=rows.device)
    bounds = torch.searchsorted(rows, starts).tolist()
    sampled = torch.empty_like(out)
    for i, r0 in enumerate(range(0, n_rows, band)):
        lo, hi = bounds[i], bounds[i + 1]
        if lo == hi:
            continue
        dense = a32[r0 : r0 + band] @ b32  # [band, N]: the only dense transient
        sampled[lo:hi] = dense[rows[lo:hi] - r0, cols[lo:hi]]
    if order is None:
        return sampled
    out[order] = sampled
    return out
