"""RMSNorm with an optional constant output scale, fused forward and backward.

    y = scale * x / sqrt(mean(x^2, -1) + eps) * (offset + weight)

RMSNorm: Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
LayerNorm Scaling: Sun et al., "The Curse of Depth in Large Language Models", arXiv:2502.05795
(2025): the pre-norm of layer l is multiplied by scale = 1 / sqrt(l).
"""

from __future__ import annotations

import torch

from layerwise_kernels._backend import resolve_backend
from layerwise_kernels.rms_norm.naive import rms_norm_naive

__all__ = ["rms_norm", "rms_norm_naive"]

# The kernels compute in fp32 and store in x's dtype: wider inputs would silently lose precision.
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    scale: float = 1.0,
    *,
    offset: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Root-mean-square norm of the last dim of x, times (offset + weight), times a constant scale.

        y = scale * (x / sqrt(mean(x^2, -1) + eps)) * (offset + weight)

    (Zhang & Sennrich 2019). `scale` is LayerNorm Scaling's 1/sqrt(l) for the pre-norm of layer l
    (Sun et al. 2025, "The Curse of Depth in Large Language Models"); `offset=1.0` gives Gemma's
    `(1 + weight)` parameterisation.

    Numerics: the mean of squares and the normalisation run in fp32; the normalised x is rounded to
    x.dtype and then multiplied by (offset + weight) * scale in fp32, and the product is rounded
    once to x.dtype. With scale=1 and offset=0 this is exactly HF `LlamaRMSNorm` (bit-equal in
    fp32 and, for a weight of x's dtype, in bf16/fp16). In fp32 offset=1 is exactly HF
    `GemmaRMSNorm`; in bf16/fp16 Gemma keeps the normalised x in fp32 up to its last multiply, so
    the two can differ by one rounding of x.dtype. The output always has x's dtype (HF Llama
    promotes to the weight's dtype when they differ).

    Args:
        x: input of any shape [..., hidden], fp32/bf16/fp16; need not be contiguous.
        weight: per-channel gain, shape [hidden].
        eps: added to the mean of squares before the square root.
        scale: constant multiplier of the output (1 / sqrt(layer) for LayerNorm Scaling).
        offset: added to the weight (1.0 for Gemma-style zero-initialised weights).
        backend: "auto" (Triton for fp32/bf16/fp16 CUDA tensors when triton is installed,
            else torch),
            "torch" (the reference in `naive.py`), or "triton" (CUDA tensors, or CPU tensors
            under TRITON_INTERPRET=1).

    Returns:
        y with x's shape and dtype; differentiable with respect to x and weight.
    """
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rms_norm needs weight of shape [hidden] = [{x.shape[-1]}] for x of shape "
            f"{tuple(x.shape)}, got {tuple(weight.shape)}"
        )
    chosen = resolve_backend(backend, x, weight)
    if chosen == "triton" and x.dtype not in _TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(
                f"rms_norm's Triton kernel takes x in {_TRITON_DTYPES}, got {x.dtype}: "
                "pass backend='torch' or backend='auto'"
            )
        chosen = "torch"
    if chosen == "torch":
        return rms_norm_naive(x, weight, eps, scale, offset)
    from layerwise_kernels.rms_norm._triton import RMSNormFunction

    return RMSNormFunction.apply(x, weight, float(eps), float(scale), float(offset))
