"""Fused optimizer steps of SPAM and Stable-SPAM: one multi-tensor kernel per update.

SPAM: Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training", ICLR 2025.
Stable-SPAM: Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
arXiv:2502.17055 (2025). The optimizers themselves (counters, schedules, state) live in `spam_opt`;
these ops are their inner loops:

    spam_step_          g = sign(g) sqrt(theta v) where g^2 > theta v;  Adam moments;
                        p = (p - a_i m / (sqrt(v) + eps)) * decay
    stable_spam_step_   p = p * decay;  g = g r_i where |g| > c_i (AdaClip);  g = g s_i (AdaGN);
                        Adam moments (optionally reset before or after);  p -= a_i m / (sqrt(v) + e_i)
    per_tensor_abs_max            max |g| of every tensor (AdaClip's statistic)
    per_tensor_clipped_sq_norm    sum (clipped g)^2 of every tensor (AdaGN's statistic)

Every op takes lists of tensors (local shards for FSDP2; the caller all-reduces the statistics) and
`backend="auto" | "torch" | "triton"` with the rule of `layerwise_kernels._backend`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from layerwise_kernels._backend import resolve_backend
from layerwise_kernels.spam_step.naive import (
    per_tensor_abs_max_naive,
    per_tensor_clipped_sq_norm_naive,
    spam_step_naive_,
    stable_spam_step_naive_,
)

__all__ = [
    "per_tensor_abs_max",
    "per_tensor_abs_max_naive",
    "per_tensor_clipped_sq_norm",
    "per_tensor_clipped_sq_norm_naive",
    "spam_step_",
    "spam_step_naive_",
    "stable_spam_step_",
    "stable_spam_step_naive_",
]

# The kernels compute in fp32 (fp64 for fp64) and store in each tensor's dtype.
TRITON_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

Vector = torch.Tensor | Sequence[float]


def _check_lists(name: str, lists: Sequence[Sequence[torch.Tensor]]) -> None:
    n = len(lists[0])
    if any(len(ts) != n for ts in lists):
        raise ValueError(
            f"{name}: every list needs one tensor per parameter, got {[len(ts) for ts in lists]}"
        )
    for i, ts in enumerate(zip(*lists)):
        if any(t.shape != ts[0].shape for t in ts):
            raise ValueError(
                f"{name}: tensor {i} has shapes {[tuple(t.shape) for t in ts]} across the lists; "
                "a parameter, its gradient and its moments must have one shape"
            )


def _choose(name: str, backend: str, lists: Sequence[Sequence[torch.Tensor]]) -> str:
    flat = [t for ts in lists for t in ts]
    chosen = resolve_backend(backend, *flat)
    if chosen == "torch":
        return chosen
    problems = []
    for ts in lists:
        dtypes = {t.dtype for t in ts}
        if len(dtypes) > 1 or not dtypes <= set(TRITON_DTYPES):
            problems.append(
                f"dtypes {sorted(str(d) for d in dtypes)} (one of {TRITON_DTYPES} per list)"
            )
        if not all(t.is_contiguous() for t in ts):
            problems.append("non-contiguous tensors")
    if not problems:
        return "triton"
    if backend == "triton":
        raise TypeError(
            f"{name}'s Triton kernel cannot take {'; '.join(problems)}: pass backend='torch'"
        )
    return "torch"


def spam_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    step_sizes: Vector,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    clip_threshold: float = 0.0,
    decay: float = 1.0,
    write_clipped_grad: bool = False,
    backend: str = "auto",
) -> None:
    """One SPAM update of every tensor, in place (Huang et al., ICLR 2025, Alg. 1).

        g = sign(g) * sqrt(theta * v)   where g^2 > theta * v      (theta = clip_threshold; 0: off)
        m = b1 * m + (1 - b1) * g ;  v = b2 * v + (1 - b2) * g^2
        p = (p - step_sizes[i] * m / (sqrt(v) + eps)) * decay

    The spike test uses v before this step's update. The caller folds the learning rate, the
    warm-up scale and the bias corrections into `step_sizes` (one per tensor) and decoupled weight
    decay into `decay` (1 - lr * wd). `write_clipped_grad` stores the clipped g into `grads`
    (what the official code does). Tensors of list i share a dtype; lists may differ (bf16 params
    with fp32 moments). Computed in fp32 (fp64 for fp64).
    """
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    _check_lists("spam_step_", lists)
    if not params:
        return
    kwargs = dict(
        beta1=beta1, beta2=beta2, eps=eps, clip_threshold=clip_threshold, decay=decay,
        write_clipped_grad=write_clipped_grad,
    )  # fmt: skip
    if _choose("spam_step_", backend, lists) == "torch":
        spam_step_naive_(*lists, step_sizes, **kwargs)
        return
    from layerwise_kernels.spam_step import _triton

    _triton.spam_step(*lists, step_sizes, **kwargs)


def stable_spam_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    clip_thresholds: Vector,
    clip_ratios: Vector,
    grad_scales: Vector,
    step_sizes: Vector,
    epss: Vector,
    *,
    beta1: float,
    beta2: float,
    decay: float = 1.0,
    reset_moments: str = "none",
    write_clipped_grad: bool = False,
    backend: str = "auto",
) -> None:
    """One Stable-SPAM update of every tensor, in place (Huang et al. 2025, Alg. 1).

        p = p * decay
        g = g * clip_ratios[i]   where |g| > clip_thresholds[i]          (AdaClip: Mh, Mh / max|g|)
        g = g * grad_scales[i]                                           (AdaGN)
        m = b1 * m + (1 - b1) * g ;  v = b2 * v + (1 - b2) * g^2         (b1 already times s(T))
        p = p - step_sizes[i] * m / (sqrt(v) + epss[i])

    `reset_moments`: "before" zeroes m and v before this step's update (MoRet), "after" zeroes them
    after it (the official code's order), "none". The per-tensor vectors may be device tensors (no
    host synchronisation) or sequences of floats. `write_clipped_grad` stores AdaClip's g into grads.
    """
    if reset_moments not in ("none", "before", "after"):
        raise ValueError(
            f"reset_moments must be 'none', 'before' or 'after', got {reset_moments!r}"
        )
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    _check_lists("stable_spam_step_", lists)
    if not params:
        return
    vectors = (clip_thresholds, clip_ratios, grad_scales, step_sizes, epss)
    kwargs = dict(
        beta1=beta1, beta2=beta2, decay=decay, reset_moments=reset_moments,
        write_clipped_grad=write_clipped_grad,
    )  # fmt: skip
    if _choose("stable_spam_step_", backend, lists) == "torch":
        stable_spam_step_naive_(*lists, *vectors, **kwargs)
        return
    from layerwise_kernels.spam_step import _triton

    _triton.stable_spam_step(*lists, *vectors, **kwargs)


def per_tensor_abs_max(tensors: Sequence[torch.Tensor], *, backend: str = "auto") -> torch.Tensor:
    """max |x| of every tensor as a 1-D tensor (fp32; fp64 for fp64 input; 0 for empty tensors)."""
    if not tensors:
        return torch.zeros(0)
    if _choose("per_tensor_abs_max", backend, [tensors]) == "torch":
        return per_tensor_abs_max_naive(tensors)
    from layerwise_kernels.spam_step import _triton

    return _triton.per_tensor_abs_max(tensors)


def per_tensor_clipped_sq_norm(
    tensors: Sequence[torch.Tensor],
    clip_thresholds: Vector,
    clip_ratios: Vector,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """sum_j (x_j * clip_ratios[i] if |x_j| > clip_thresholds[i] else x_j)^2 of every tensor x_i.

    The squared Frobenius norm of the AdaClip-clipped gradient, reduced in a fixed order.
    """
    if not tensors:
        return torch.zeros(0)
    if _choose("per_tensor_clipped_sq_norm", backend, [tensors]) == "torch":
        return per_tensor_clipped_sq_norm_naive(tensors, clip_thresholds, clip_ratios)
    from layerwise_kernels.spam_step import _triton

    return _triton.per_tensor_clipped_sq_norm(tensors, clip_thresholds, clip_ratios)
