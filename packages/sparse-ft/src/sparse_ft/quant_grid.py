"""The min-max quantisation grid of GPTQ (Frantar et al., ICLR 2023, arXiv 2210.17323; official code
IST-DASLab/gptq `quant.py::Quantizer` with `perchannel=True`): one (scale, zero) per output row of
the slice it is fitted on (a whole matrix, or a group of consecutive input columns).

    xmin = min(0, min_j w_j),  xmax = max(0, max_j w_j)              (0 is always representable)
    sym:  xmax = max(|xmin|, xmax);  xmin = -xmax where xmin < 0     (a row without negatives keeps 0)
    xmin = xmax = 0  ->  (-1, 1)
    scale = (xmax - xmin) / maxq,   maxq = 2^bits - 1
    zero  = (maxq + 1) / 2  (sym)   or   round(-xmin / scale)  (asym)
    code  = clamp(round(w / scale) + zero, 0, maxq),   dequant = scale (code - zero)

3-bit symmetric levels are scale * {-4, ..., 3} with scale = 2 absmax / 7 (the positive end stops at
6/7 absmax). Optional `mse` shrink search: for p = 1 - i / grid, i < maxshrink * grid, the grid of
[p xmin, p xmax] (sym: same zero) is kept per row where sum |dequant - w|^norm is smallest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["QuantGrid", "dequantize", "fit_grid", "grid_codes", "grid_quantize"]


@dataclass(frozen=True)
class QuantGrid:
    """scale and zero of shape [rows, 1] (integer-valued zero), and the top code maxq."""

    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int

    @property
    def bits(self) -> int:
        return (self.maxq + 1).bit_length() - 1


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8 (2^bits - 1 levels), got {bits!r}")
    return 2**bits - 1


def grid_codes(w: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Integer codes clamp(round(w / scale) + zero, 0, maxq), as floats of w's dtype."""
    return torch.clamp(torch.round(w / grid.scale) + grid.zero, 0, grid.maxq)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """scale (code - zero): the value a code stands for (broadcast scale / zero per row)."""
    return scale * (codes.to(scale.dtype) - zero.to(scale.dtype))


def grid_quantize(w: torch.Tensor, grid: QuantGrid) -> torch.Tensor:
    """Round to the nearest level of `grid`: scale (clamp(round(w / scale) + zero) - zero)."""
    return grid.scale * (grid_codes(w, grid) - grid.zero)


@torch.no_grad()
def fit_grid(
    w: torch.Tensor,
    bits: int,
    *,
    sym: bool = False,
    mse: bool = False,
    norm: float = 2.4,
    grid: int = 100,
    maxshrink: float = 0.8,
) -> QuantGrid:
    """The per-row min-max grid of `w` [rows, cols] (GPTQ's `Quantizer.find_params(w, weight=True)`).

    Args:
        w: the weights (a whole matrix or one group of its columns).
        bits: 2..8; maxq = 2^bits - 1.
        sym: symmetric grid with zero (maxq + 1) / 2; else asymmetric with an integer zero.
        mse: shrink the range by p = 1 - i / grid (i < maxshrink * grid) where that lowers
            sum |q - w|^norm of the row (off in the official drivers).
    """
    maxq = _check_bits(bits)
    x = w.flatten(1)
    floor = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    xmin = torch.minimum(x.min(1)[0], floor)
    xmax = torch.maximum(x.max(1)[0], floor)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        negative = xmin < 0
        xmin = torch.where(negative, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    if mse:
        best = torch.full_like(scale, float("inf"))
        for i in range(int(maxshrink * grid)):
            p = 1 - i / grid
            xmin1, xmax1 = p * xmin, p * xmax
            scale1 = (xmax1 - xmin1) / maxq
            zero1 = zero if sym else torch.round(-xmin1 / scale1)
            trial = QuantGrid(scale1.unsqueeze(1), zero1.unsqueeze(1), maxq)
            err = (grid_quantize(x, trial) - x).abs_().pow_(norm).sum(1)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, scale1, scale)
            zero = torch.where(better, zero1, zero)
    return QuantGrid(scale.unsqueeze(1), zero.unsqueeze(1), maxq)
