"""GPTQ: Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023 (arXiv 2210.17323; code IST-DASLab/gptq,
`gptq.py::GPTQ.fasterquant`). RTN (round to nearest) on the same grid is the baseline.

Layer-wise reconstruction min ||W X - Q X||^2 over Q on the grid (`sparse_ft.quant_grid`), with the
Optimal Brain Quantizer update applied column by column:

    H = (2 / N_seq) sum_tokens x x^T        dead inputs (H_jj = 0): H_jj = 1, W_:j = 0
    (act-order: columns sorted by diag H, descending)
    U = chol((H + lambda I)^-1) upper,   lambda = percdamp * mean(diag H)   (U^T U = (H + lambda I)^-1)
    for j = 0 .. n-1:   q_:j = quant(w_:j),   err = (w_:j - q_:j) / U_jj,   W_:,j: -= err U_j,j:
    error = sum_j ||err_j||^2 / 2

Lazy batches: the rank-1 updates stay inside a block of B = 128 columns; the block's errors reach
the columns to its right in one matmul, W_:,i2: -= Err U_i1:i2,i2:. Groups of g columns get their own
grid: fitted from the current weights when the group's first column comes up ("dynamic"), or all
up front on the original weights ("static groups", the only kind that survives act-order without a
per-column group index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sparse_ft.quant_grid import QuantGrid, dequantize, fit_grid, grid_codes
from sparse_ft.sparsegpt import _upper_cholesky_of_inverse

__all__ = ["GPTQHessian", "QuantizedWeight", "gptq_quantize", "rtn_quantize"]


class GPTQHessian:
    """H = (2 / N) sum x x^T of a Linear's inputs, N = SEQUENCES seen, fp32, kept normalised as the
    official `GPTQ.add_batch` does: per batch of m sequences H <- H n / (n + m), n <- n + m,
    H += (sqrt(2 / n) X)^T (sqrt(2 / n) X)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.sequences = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        count = inputs.shape[0]
        x = inputs.reshape(-1, inputs.shape[-1]).t()
        self.hessian *= self.sequences / (self.sequences + count)
        self.sequences += count
        x = math.sqrt(2 / self.sequences) * x.float()
        self.hessian += x.matmul(x.t())


@dataclass
class QuantizedWeight:
    """A quantised [out, in] matrix: W_ij = scales[i, g_idx[j]] (codes_ij - zeros[i, g_idx[j]]).

    codes: uint8 [out, in] in the ORIGINAL column order; scales [out, groups] (the working dtype,
    fp32 unless fp64 was given); zeros [out, groups] uint8 (integers: (maxq + 1) / 2 when sym);
    g_idx int32 [in]: each column's group (under act-order with dynamic groups a group is
    contiguous in the permuted order, so the index is not j // g); error: GPTQ's
    sum ||err||^2 / 2 (0 for RTN).
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    error: float = 0.0

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The fake-quantised weights (bit for bit what the quantiser wrote)."""
        idx = self.g_idx.long()
        weight = dequantize(self.codes, self.scales[:, idx], self.zeros[:, idx])
        return weight if dtype is None else weight.to(dtype)


def _working_copy(weight: torch.Tensor) -> torch.Tensor:
    # fp32 like the official `W.float()`; fp64 stays fp64 (exactness tests)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return weight.detach().to(dtype).clone()


def _check_groups(group_size: int, static_groups: bool, cols: int) -> None:
    if group_size != -1 and group_size < 1:
        raise ValueError(f"group_size must be -1 (one grid per row) or >= 1, got {group_size}")
    if static_groups and group_size == -1:
        raise ValueError("static_groups fits one grid per group: set group_size (e.g. 128)")


def _stack(grids: list[QuantGrid]) -> tuple[torch.Tensor, torch.Tensor]:
    scales = torch.cat([g.scale for g in grids], dim=1)
    zeros = torch.cat([g.zero for g in grids], dim=1)
    if not torch.equal(zeros, zeros.round()) or zeros.min() < 0 or zeros.max() > 255:
        raise RuntimeError("GPTQ grid zeros must be integers in 0..255 to be stored as codes")
    return scales, zeros.to(torch.uint8)


@torch.no_grad()
def rtn_quantize(
    weight: torch.Tensor,
    bits: int,
    *,
    group_size: int = -1,
    sym: bool = False,
    mse: bool = False,
) -> tuple[torch.Tensor, QuantizedWeight]:
    """Round every weight to the nearest level of its row's (or row-group's) grid.

    Returns (fake-quantised weight in `weight`'s dtype, QuantizedWeight). The official
    `--nearest` always fits an asymmetric whole-row grid (it ignores --sym and --groupsize);
    `sym=False, group_size=-1` is that case.
    """
    w = _working_copy(weight)
    cols = w.shape[1]
    _check_groups(group_size, False, cols)
    g = cols if group_size == -1 else group_size
    grids = [fit_grid(w[:, i : i + g], bits, sym=sym, mse=mse) for i in range(0, cols, g)]
    q = torch.empty_like(w)
    codes = torch.empty_like(w)
    for k, grid in enumerate(grids):
        part = slice(k * g, k * g + g)
        codes[:, part] = grid_codes(w[:, part], grid)
        q[:, part] = grid.scale * (codes[:, part] - grid.zero)
    scales, zeros = _stack(grids)
    g_idx = (torch.arange(cols, device=w.device) // g).to(torch.int32)
    return q.to(weight.dtype), QuantizedWeight(codes.to(torch.uint8), scales, zeros, g_idx, bits)


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    *,
    group_size: int = -1,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    mse: bool = False,
    damp_retries: int = 1,
    reference_quirks: bool = False,
) -> tuple[torch.Tensor, QuantizedWeight]:
    """Quantise `weight` [out, in] with GPTQ given the input Hessian `hessian` [in, in].

    Args:
        bits: 2..8 (maxq = 2^bits - 1).
        group_size: -1 (one grid per row) or g (one per row and g consecutive columns).
        sym: symmetric grid; the official CLI's default is asymmetric.
        act_order: quantise columns in order of decreasing diag H (`--act-order`).
        static_groups: fit every group's grid up front on the original (unpermuted, un-updated)
            weights (`--static-groups`); otherwise each grid is fitted when its first column
            comes up, on the weights as updated so far.
        blocksize: B, columns per lazy batch (official 128).
        percdamp: lambda = percdamp * mean(diag H).
        mse: the grid's shrink search (off in the official drivers).
        damp_retries: times to retry with 10x the damping when a Cholesky factorisation fails
            (the diffusion-LM study's GPTQ_VIRTUAL retries once; the official code never does).
        reference_quirks: reproduce the official code: (1) a dynamic group's grid is fitted on
            W[:, j:j+g] of the OUTER matrix, which holds the earlier blocks' updates but not those of
            the columns of the current block before j, so when a group starts inside a block
            (g < B, or g not a multiple of B) it is fitted on stale weights; (2) with group_size=-1
            the row grid is fitted before dead inputs are zeroed. Otherwise (paper-correct) a grid
            is fitted on the current weights, every update of the columns before j included (what
            the column-by-column algorithm without lazy batches sees), and after dead inputs are
            zeroed. The two agree whenever every group starts a block and no input is dead.

    Returns:
        (fake-quantised weight in `weight`'s dtype, QuantizedWeight with codes / scales / zeros /
        g_idx in the original column order and GPTQ's error sum ||err||^2 / 2).
    """
    w = _working_copy(weight)
    h = hessian.detach().to(w.dtype).clone()
    cols = w.shape[1]
    if h.shape != (cols, cols):
        raise ValueError(f"hessian must be [{cols}, {cols}] for a weight with {cols} inputs")
    _check_groups(group_size, static_groups, cols)
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    g = group_size
    row_grid = fit_grid(w, bits, sym=sym, mse=mse) if reference_quirks and g == -1 else None

    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    if g == -1 and row_grid is None:
        row_grid = fit_grid(w, bits, sym=sym, mse=mse)
    static = []
    if static_groups:  # on the original columns, before any permutation
        static = [fit_grid(w[:, i : i + g], bits, sym=sym, mse=mse) for i in range(0, cols, g)]

    perm = torch.argsort(torch.diag(h), descending=True) if act_order else None
    if perm is not None:
        w = w[:, perm]
        h = h[perm][:, perm]
    try:
        hinv = _upper_cholesky_of_inverse(h, percdamp, retries=1 + damp_retries)
    except RuntimeError:
        raise RuntimeError(
            f"GPTQ: H + damping is not positive definite even with {10**damp_retries}x percdamp="
            f"{percdamp}; use more calibration tokens, raise percdamp or damp_retries"
        ) from None

    order = perm.tolist() if perm is not None else None  # host list: no device sync per column
    q = torch.zeros_like(w)
    codes = torch.zeros_like(w)
    losses = torch.zeros_like(w)
    dynamic: list[QuantGrid] = []
    grid = row_grid
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if g != -1 and static_groups:
                grid = static[(order[j] if order is not None else j) // g]
            elif g != -1 and j % g == 0:
                if reference_quirks or i == 0:
                    group = w[:, j : j + g]
                else:  # the current weights: this block's updates so far, also beyond the block
                    beyond = w[:, i2 : j + g] - err1[:, :i] @ hinv[i1:j, i2 : j + g]
                    group = torch.cat([w1[:, i : i + g], beyond], dim=1)
                grid = fit_grid(group, bits, sym=sym, mse=mse)
                dynamic.append(grid)
            col = w1[:, i]
            code = grid_codes(col.unsqueeze(1), grid).flatten()  # type: ignore[arg-type]
            qcol = (grid.scale * (code.unsqueeze(1) - grid.zero)).flatten()  # type: ignore[union-attr]
            d = hinv1[i, i]
            codes[:, j] = code
            q[:, j] = qcol
            losses[:, j] = (col - qcol) ** 2 / d**2
            err = (col - qcol) / d
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])

    positions = torch.arange(cols, device=w.device)
    if g == -1:
        grids, g_idx = [row_grid], torch.zeros_like(positions)
    elif static_groups:
        grids, g_idx = static, positions // g
    else:
        grids, g_idx = dynamic, positions // g  # in the quantisation (permuted) order
    if perm is not None:
        invperm = torch.argsort(perm)
        q, codes = q[:, invperm], codes[:, invperm]
        if not static_groups:
            g_idx = g_idx[invperm]
    scales, zeros = _stack(grids)  # type: ignore[arg-type]
    result = QuantizedWeight(
        codes.to(torch.uint8),
        scales,
        zeros,
        g_idx.to(torch.int32),
        bits,
        float(losses.sum() / 2),
    )
    return q.to(weight.dtype), result
