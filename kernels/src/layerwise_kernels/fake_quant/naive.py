"""Pure-torch fake quantisation: the reference the Triton kernel is tested against.

Symmetric, one scale per group of the last dim (the whole row by default), computed in fp32:

    int8 / int4:  s = max|x| / q_max (127 / 7),  y = s * clamp(round(x / s), -q_max, q_max)
    fp4 (e2m1):   s = max|x| / 6,                y = s * e2m1(x / s)

round is to the nearest integer, ties to even; e2m1(u) is the nearest of +-{0, 0.5, 1, 1.5, 2, 3, 4, 6},
ties to the even mantissa (the IEEE-style rounding of a 1-sign, 2-exponent, 1-mantissa float). A
group whose max is 0 stays 0. The backward pass is the straight-through estimator: dy/dx = 1.
"""

from __future__ import annotations

import torch

__all__ = ["QMAX", "fake_quant_naive", "fake_quant_values"]

# The largest quantised magnitude of each mode.
QMAX = {"int8": 127.0, "int4": 7.0, "fp4": 6.0}


def _round_e2m1(u: torch.Tensor) -> torch.Tensor:
    # Spacing of e2m1 values: 0.5 below 2, 1 in [2, 4), 2 in [4, 6]; within each binade the
    # nearest value with ties to even is round-half-even of u / spacing.
    a = u.abs()
    spacing = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    return torch.sign(u) * torch.clamp(torch.round(a / spacing) * spacing, max=6.0)


def fake_quant_values(x: torch.Tensor, mode: str, group_size: int | None = None) -> torch.Tensor:
    """The fake-quantised values of x (no autograd), in x's dtype."""
    width = x.shape[-1] if group_size is None else group_size
    rows = x.detach().reshape(-1, width).to(torch.float32)
    qmax = QMAX[mode]
    scale = rows.abs().amax(dim=1, keepdim=True) / qmax
    u = rows / torch.where(scale > 0, scale, torch.ones_like(scale))
    q = _round_e2m1(u) if mode == "fp4" else torch.clamp(torch.round(u), -qmax, qmax)
    return (q * scale).reshape(x.shape).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mode: str, group_size: int | None) -> torch.Tensor:
        return fake_quant_values(x, mode, group_size)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return dy, None, None


def fake_quant_naive(
    x: torch.Tensor, mode: str = "int4", group_size: int | None = None
) -> torch.Tensor:
    """Fake-quantised x with a straight-through gradient (see the module docstring)."""
    return _StraightThrough.apply(x, mode, group_size)
