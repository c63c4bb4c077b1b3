"""OWL: Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
LLMs to High Sparsity", ICML 2024 (arXiv 2310.05175; code luuyin/OWL, `lib/prune_all.py`).

Layers with more outlier Wanda scores are pruned less. For block l, with A the Wanda scores
|W_ij| * ||X_j|| of all its Linear layers taken together,

    D_l  = 100 * mean(A > M * mean(A))                         outlier ratio, M = 5
    D~_l = (D_l - min D) / (max D - min D) * 2 * lambda          lambda = 0.08
    S_l  = 1 - (D~_l - mean(D~) + 1 - S)                         S = target sparsity; S_l <= 0 -> 0.01

so the S_l average to S and span [S - lambda, S + lambda]. The official code computes D_l per
transformer BLOCK; the diffusion-LM pruning study (Conzel et al., super-outlier-dlm,
`owl_sparsity.py`) reads "block" as one weight matrix and allocates per matrix
(`granularity="matrix"`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from layerwise_core import renamed_kwargs

__all__ = ["owl_outlier_ratio", "owl_sparsities"]


def owl_outlier_ratio(
    scores: torch.Tensor | Sequence[torch.Tensor], threshold: float = 5.0
) -> float:
    """D = 100 * mean(A > M * mean(A)) over all entries of the score tensor(s) A (one block)."""
    if not torch.is_tensor(scores):
        scores = torch.cat([s.reshape(-1).float() for s in scores])
    flat = scores.reshape(-1).float()
    return float((flat > threshold * flat.mean()).float().mean() * 100)


@renamed_kwargs(lamda="owl_lambda")
def owl_sparsities(
    outlier_ratios: Sequence[float], sparsity: float, owl_lambda: float = 0.08
) -> list[float]:
    """Per-layer (or per-matrix) sparsities S_l from outlier ratios D_l (the module docstring;
    `owl_lambda` is its lambda, the official code's `lamda`).

    Equal ratios give the uniform allocation (the official code would divide by zero there).
    """
    d = torch.tensor([float(r) for r in outlier_ratios], dtype=torch.float64)
    if d.numel() == 0:
        return []
    spread = d.max() - d.min()
    if spread <= 0:
        return [float(sparsity)] * d.numel()
    normalised = (d - d.min()) / spread * (2 * owl_lambda)
    keep = normalised - normalised.mean() + (1 - sparsity)
    out = 1 - keep
    out = torch.where(out <= 0, torch.full_like(out, 0.01), out)
    return [float(s) for s in out]
