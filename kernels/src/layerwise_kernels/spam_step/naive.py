"""Pure-torch references of the fused SPAM / Stable-SPAM steps: what the Triton kernels are tested against.

Each tensor is updated on its own, in fp32 (fp64 for fp64 tensors), and stored back in its dtype;
the per-tensor scalars (step sizes, clip thresholds, ...) come as sequences or 1-D tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "per_tensor_abs_max_naive",
    "per_tensor_clipped_sq_norm_naive",
    "spam_step_naive_",
    "stable_spam_step_naive_",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; every other floating dtype is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_vector(values: torch.Tensor | Sequence[float], n: int, like: torch.Tensor) -> torch.Tensor:
    """`values` as a 1-D tensor of n entries on like's device in like's compute dtype."""
    dtype = compute_dtype(like.dtype)
    if isinstance(values, torch.Tensor):
        out = values.to(device=like.device, dtype=dtype).reshape(-1)
    else:
        out = torch.tensor(list(values), device=like.device, dtype=dtype)
    if out.numel() != n:
        raise ValueError(f"expected one value per tensor ({n}), got {out.numel()}")
    return out


def spam_step_naive_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    step_sizes: torch.Tensor | Sequence[float],
    *,
    beta1: float,
    beta2: float,
    eps: float,
    clip_threshold: float = 0.0,
    decay: float = 1.0,
    write_clipped_grad: bool = False,
) -> None:
    """In place, per tensor i (theta = clip_threshold, 0 = no clipping):

    g = sign(g) sqrt(theta v) where g^2 > theta v;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p = (p - step_sizes[i] m / (sqrt(v) + eps)) * decay.
    """
    if not params:
        return
    steps = as_vector(step_sizes, len(params), params[0])
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        dtype = compute_dtype(p.dtype)
        p32, g32, m32, v32 = (t.to(dtype) for t in (p, g, m, v))
        if clip_threshold > 0:
            bound = torch.sqrt(clip_threshold * v32)
            g32 = torch.where(g32 * g32 > clip_threshold * v32, torch.sign(g32) * bound, g32)
            if write_clipped_grad:
                g.copy_(g32)
        m32 = beta1 * m32 + (1 - beta1) * g32
        v32 = beta2 * v32 + (1 - beta2) * g32 * g32
        p32 = (p32 - steps[i] * m32 / (torch.sqrt(v32) + eps)) * decay
        p.copy_(p32)
        m.copy_(m32)
        v.copy_(v32)


def stable_spam_step_naive_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    clip_thresholds: torch.Tensor | Sequence[float],
    clip_ratios: torch.Tensor | Sequence[float],
    grad_scales: torch.Tensor | Sequence[float],
    step_sizes: torch.Tensor | Sequence[float],
    epss: torch.Tensor | Sequence[float],
    *,
    beta1: float,
    beta2: float,
    decay: float = 1.0,
    reset_moments: str = "none",
    write_clipped_grad: bool = False,
) -> None:
    """In place, per tensor i:

    p = p * decay;  g = g * clip_ratios[i] where |g| > clip_thresholds[i];  g = g * grad_scales[i];
    (m, v = 0 first if reset_moments == "before");  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p = p - step_sizes[i] m / (sqrt(v) + epss[i]);  (m, v = 0 after if reset_moments == "after").
    """
    if not params:
        return
    n, like = len(params), params[0]
    at, ratio, scale, steps, eps = (
        as_vector(x, n, like) for x in (clip_thresholds, clip_ratios, grad_scales, step_sizes, epss)
    )
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        dtype = compute_dtype(p.dtype)
        p32, g32, m32, v32 = (t.to(dtype) for t in (p, g, m, v))
        p32 = p32 * decay
        g32 = torch.where(g32.abs() > at[i], g32 * ratio[i], g32)
        if write_clipped_grad:
            g.copy_(g32)
        g32 = g32 * scale[i]
        if reset_moments == "before":
            m32, v32 = torch.zeros_like(m32), torch.zeros_like(v32)
        m32 = beta1 * m32 + (1 - beta1) * g32
        v32 = beta2 * v32 + (1 - beta2) * g32 * g32
        p32 = p32 - steps[i] * m32 / (torch.sqrt(v32) + eps[i])
        if reset_moments == "after":
            m32, v32 = torch.zeros_like(m32), torch.zeros_like(v32)
        p.copy_(p32)
        m.copy_(m32)
        v.copy_(v32)


def per_tensor_abs_max_naive(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """max |x| of every tensor (0 for an empty one), in the compute dtype."""
    if not tensors:
        return torch.zeros(0)
    dtype = compute_dtype(tensors[0].dtype)
    return torch.stack(
        [t.to(dtype).abs().max() if t.numel() else t.new_zeros((), dtype=dtype) for t in tensors]
    )


def per_tensor_clipped_sq_norm_naive(
    tensors: Sequence[torch.Tensor],
    clip_thresholds: torch.Tensor | Sequence[float],
    clip_ratios: torch.Tensor | Sequence[float],
) -> torch.Tensor:
    """sum (x * clip_ratios[i] where |x| > clip_thresholds[i] else x)^2 of every tensor."""
    if not tensors:
        return torch.zeros(0)
    n, like = len(tensors), tensors[0]
    at, ratio = as_vector(clip_thresholds, n, like), as_vector(clip_ratios, n, like)
    dtype = compute_dtype(like.dtype)
    out = []
    for i, t in enumerate(tensors):
        x = t.to(dtype)
        x = torch.where(x.abs() > at[i], x * ratio[i], x)
        out.append((x * x).sum())
    return torch.stack(out)
