"""Fake quantisation for simulated low-bit training: INT8 / INT4 symmetric and FP4 (e2m1).

Stable-SPAM (Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
arXiv:2502.17055, 2025) trains in simulated 4 bits: the weights and the inputs of every Linear are
quantised and dequantised in the forward pass, and gradients pass straight through (Bengio et al.
2013). One scale per group of the last dim (per output channel of a weight, per token of an input):

    int-b:  s = max|x| / (2^(b-1) - 1),   y = s * clamp(round(x / s), -(2^(b-1) - 1), 2^(b-1) - 1)
    fp4:    s = max|x| / 6,               y = s * e2m1(x / s),  e2m1 in +-{0, .5, 1, 1.5, 2, 3, 4, 6}

`FakeQuantLinear` and `apply_fake_quant(model, mode)` put it into a model's Linear layers.
"""

from __future__ import annotations

import torch

from layerwise_kernels._backend import resolve_backend
from layerwise_kernels.fake_quant.module import FakeQuantLinear, apply_fake_quant
from layerwise_kernels.fake_quant.naive import QMAX, fake_quant_naive

__all__ = [
    "FAKE_QUANT_MODES",
    "FakeQuantLinear",
    "apply_fake_quant",
    "fake_quant",
    "fake_quant_naive",
]

FAKE_QUANT_MODES = tuple(QMAX)

# The kernel computes in fp32 and stores in x's dtype.
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fake_quant(
    x: torch.Tensor,
    mode: str = "int4",
    *,
    group_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Symmetric fake quantisation of x with a straight-through gradient.

        int8 / int4:  s = max|x_g| / q_max (127 / 7),  y = s * clamp(round(x / s), -q_max, q_max)
        fp4 (e2m1):   s = max|x_g| / 6,                y = s * e2m1(x / s)
        backward:     dL/dx = dL/dy  (straight-through estimator)

    round: nearest, ties to even; e2m1: the nearest of +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}, ties to the
    even mantissa. x_g is a group of `group_size` consecutive entries of the last dim (None: the whole
    last dim, i.e. per output channel for a weight [out, in] and per token for activations
    [..., hidden]); a group whose max is 0 stays 0. Computed in fp32, returned in x's dtype.

    Args:
        x: any shape; the last dim must be divisible by group_size.
        mode: "int8", "int4" or "fp4".
        group_size: entries per scale along the last dim, or None for one scale per row.
        backend: "auto" (Triton for CUDA tensors when triton is installed), "torch" or "triton".
    """
    if mode not in QMAX:
        raise ValueError(f"fake_quant mode must be one of {FAKE_QUANT_MODES}, got {mode!r}")
    width = x.shape[-1] if x.dim() else 1
    group = width if group_size is None else group_size
    if group < 1 or width % group:
        raise ValueError(
            f"fake_quant needs group_size to divide the last dim ({width}), got {group_size}"
        )
    if not x.is_floating_point():
        raise TypeError(f"fake_quant quantises floating tensors, got {x.dtype}")
    chosen = resolve_backend(backend, x)
    if chosen == "triton" and x.dtype not in TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(
                f"fake_quant's Triton kernel takes x in {TRITON_DTYPES}, got {x.dtype}: "
                "pass backend='torch' or backend='auto'"
            )
        chosen = "torch"
    if chosen == "torch":
        return fake_quant_naive(x, mode, group_size)
    from layerwise_kernels.fake_quant._triton import FakeQuantFunction

    return FakeQuantFunction.apply(x, QMAX[mode], mode == "fp4", group)
