"""Top-2 confidence of logits without the softmax tensor: argmax, its probability, top-1/top-2 gap.

    token = argmax_v z_v,   prob = softmax(z)_token = exp(z_(1) - logsumexp z),   gap = z_(1) - z_(2)

What masked-diffusion samplers read at every position of every step: LLaDA's low-confidence
remasking and Fast-dLLM's threshold rule use `prob` (Nie et al., "Large Language Diffusion Models",
arXiv:2502.09992; Wu et al., "Fast-dLLM", arXiv:2505.22618); Prophet's early-commit rule uses `gap`,
the log-probability margin log p_(1) - log p_(2) (Li et al., "Diffusion Language Models Know the
Answer Before Decoding", arXiv:2508.19982); Dream's `topk_margin` uses p_(1) - p_(2) =
prob * (1 - exp(-gap)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from layerwise_kernels._backend import resolve_backend
from layerwise_kernels.top2_confidence.naive import top2_confidence_naive

__all__ = ["Top2Confidence", "top2_confidence", "top2_confidence_naive"]

_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Top2Confidence(NamedTuple):
    token: torch.Tensor  # int64, argmax over the last dim (first index on ties)
    prob: torch.Tensor  # fp32, softmax probability of `token`
    gap: torch.Tensor  # fp32, top-1 minus top-2 logit (= log p_(1) - log p_(2)), >= 0


def top2_confidence(logits: torch.Tensor, backend: str = "auto") -> Top2Confidence:
    """Argmax, top-1 probability and top-1/top-2 logit gap over the last dim of `logits`.

        token = argmax_v z_v,   prob = exp(z_(1) - logsumexp_v z_v),   gap = z_(1) - z_(2)

    The Triton kernel reads each row once with an online softmax (running max, second max and
    rescaled sum of exponentials); neither backend materialises the [..., V] probabilities.

    Args:
        logits: [..., V] with V >= 2, fp32/bf16/fp16 (fp64 on the torch backend); any strides.
        backend: "auto" (Triton for CUDA tensors when triton is installed, else torch), "torch"
            (the reference in `naive.py`) or "triton" (CUDA, or CPU under TRITON_INTERPRET=1).

    Returns:
        `Top2Confidence(token, prob, gap)`, each of shape logits.shape[:-1]; prob and gap in fp32
        (fp64 for fp64 logits on the torch backend). Not differentiable: a decoding-time op.
    """
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(
            f"top2_confidence needs logits [..., V] with V >= 2, got shape {tuple(logits.shape)}"
        )
    chosen = resolve_backend(backend, logits)
    if chosen == "triton" and logits.dtype not in _TRITON_DTYPES:
        if backend == "triton":
            raise TypeError(
                f"top2_confidence's Triton kernel takes logits in {_TRITON_DTYPES}, got "
                f"{logits.dtype}: pass backend='torch' or backend='auto'"
            )
        chosen = "torch"
    with torch.no_grad():
        if chosen == "torch":
            return Top2Confidence(*top2_confidence_naive(logits))
        from layerwise_kernels.top2_confidence._triton import top2_confidence_triton

        return Top2Confidence(*top2_confidence_triton(logits))
