"""Cosine-similarity matrices of layer outputs, in the three variants of the diffusion-LM
super-outlier study (github.com/Conzel/super-outlier-dlm, `scripts/stats/similarity.py`).

With o_i,t the output of block i at token t (blocks 0 .. L-2: the last block is left out, as there)::

    pooled               S_ij = cos( mean_t o_i,t , mean_t o_j,t )
    per_token            S_ij = mean_t cos(o_i,t, o_j,t)
    per_token_detrended  S_ij = mean_t cos(z_i,t, z_j,t),   z_i,t = (o_i,t - mu_t) / sigma_t

where mu_t, sigma_t are the mean and (unbiased) standard deviation over layers of each token and
channel. Pooled cosines are close to 1 whenever one channel dominates the stream (a massive
activation); detrending, or zeroing that channel first (`zero_channels`), shows the structure left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.capture import DepthCapture, as_capture
from layerwise_core import TokenInputs

__all__ = [
    "SIMILARITY_VARIANTS",
    "similarity_from_sums",
    "similarity_matrix",
    "similarity_sums",
]

SimilarityVariant = Literal["pooled", "per_token", "per_token_detrended"]
SIMILARITY_VARIANTS: tuple[SimilarityVariant, ...] = ("pooled", "per_token", "per_token_detrended")


def similarity_matrix(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    variant: SimilarityVariant = "per_token",
    zero_channels: Sequence[int] | None = None,
) -> torch.Tensor:
    """[L - 1, L - 1] cosine similarity between the outputs of blocks 0 .. L-2 over real tokens.

    Args:
        variant: "pooled", "per_token" or "per_token_detrended" (see the module docstring).
        zero_channels: hidden channels set to 0 before the similarity only (e.g. the super-outlier
            channel); the forward pass is unchanged.
    """
    if variant not in SIMILARITY_VARIANTS:
        raise ValueError(f"similarity_matrix: variant must be one of {SIMILARITY_VARIANTS}")
    capture = as_capture(source, input_ids, attention_mask, what="similarity_matrix")
    capture = capture.zero_channels(zero_channels)
    outputs = capture.stream.outputs[:-1]
    if len(outputs) < 1 or any(o is None for o in outputs):
        raise ValueError("similarity_matrix: needs the outputs of at least 2 blocks")
    stacked = torch.stack([capture.real_tokens(o).float() for o in outputs])  # [L-1, N, H]
    return similarity_from_sums(similarity_sums(stacked), stacked.shape[1], variant)


def similarity_sums(stacked: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the N tokens of stacked block outputs [K, N, H] that every variant is made of:
    "pooled" [K, H] (float64 sum of the vectors), "per_token" and "per_token_detrended" [K, K]
    (sum_t of the cosines). Sums of several batches add up to those of the whole set."""
    sums = {"pooled": stacked.double().sum(1)}
    unit = F.normalize(stacked, dim=-1).flatten(1)  # [K, N*H]: sum_t cos = flat dot product
    sums["per_token"] = (unit @ unit.T).double()
    if stacked.shape[0] < 2:  # a trajectory of one layer has no spread to z-score by
        sums["per_token_detrended"] = torch.full((1, 1), float("nan"), dtype=torch.float64)
    else:
        mu = stacked.mean(0, keepdim=True)
        sigma = stacked.std(0, keepdim=True).clamp_min(1e-8)
        z = F.normalize((stacked - mu) / sigma, dim=-1).flatten(1)
        sums["per_token_detrended"] = (z @ z.T).double()
    return sums


def similarity_from_sums(
    sums: dict[str, torch.Tensor], tokens: int, variant: SimilarityVariant
) -> torch.Tensor:
    """The [K, K] similarity of `variant` from `similarity_sums` over `tokens` tokens (float32)."""
    if variant == "pooled":
        pooled = F.normalize(sums["pooled"], dim=-1)
        return (pooled @ pooled.T).float()
    return (sums[variant] / tokens).float()
