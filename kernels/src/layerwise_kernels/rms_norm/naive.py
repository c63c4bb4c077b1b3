"""Pure-torch RMSNorm with an output scale: the reference the Triton kernel is tested against.

Its backward is torch autograd's. Casting follows HF `LlamaRMSNorm`: the normalised x is computed in
fp32 and cast to x.dtype before it meets the weight; the product with the weight is then rounded
once to x.dtype.
"""

from __future__ import annotations

import torch


def rms_norm_naive(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    scale: float = 1.0,
    offset: float = 0.0,
) -> torch.Tensor:
    """y = ((x / sqrt(mean(x^2, -1) + eps)).to(x.dtype) * ((offset + weight) * scale)).to(x.dtype)."""
    x32 = x.to(torch.float32)
    inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    normed = (x32 * inv_rms).to(x.dtype)
    # (offset + weight) * scale is a [hidden] vector: folding the scale into it keeps one full-size
    # multiply, and scale=1, offset=0 leaves the weight bit-for-bit unchanged.
    gain = (offset + weight.to(torch.float32)) * scale
    return (normed.to(torch.float32) * gain).to(x.dtype)
