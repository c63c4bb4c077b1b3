"""Heavy-tail alpha per weight matrix on FARMS blocks: the overtraining probe of the DLM-vs-AR
study (arXiv 2605.06366, spec B.3.7; code `alpha_pruning.py`, FARMS from AlphaQ, the Hill fit of
AlphaPruning / TempBalance)::

    blocks      non-overlapping b x b sub-matrices of W (stride b), at most `max_blocks` of them
                sampled at random; W itself when b exceeds one of its sides
    ESD         lambda = sigma^2 of every block, pooled and sorted
    peak x_p    10^(left edge of the fullest bin) of the histogram of log10 lambda,
                min(100, N // 2) bins
    alpha       Hill alpha = 1 + n / sum_{i >= i_min} ln(lambda_i / x_min) for every candidate
                x_min = lambda_i in [0.95 x_p, 1.5 x_p]; keep the KS-minimising one, floored at 1

The fit is `layerwise_core.fit_power_law(fit="fix_finger")` (the estimator spectral-opt uses too).
Lower alpha = heavier tail = more trained (HT-SR). Differences from the study's code: sums in
float64; the histogram is of log10(lambda) (theirs: log10(lambda + 1e-10)); when no candidate lies
in the window the fit scans the whole spectrum (theirs returns alpha = 1 then); a degenerate spectrum
(all eigenvalues equal) gives NaN (theirs: 2.0); blocks are drawn from a seeded torch generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from layerwise_core import find_decoder, fit_power_law

__all__ = ["HeavyTailAlphas", "farms_eigenvalues", "heavy_tail_alphas", "weight_alpha"]


def farms_eigenvalues(
    weight: torch.Tensor, *, block: int = 128, max_blocks: int = 256, seed: int = 0
) -> torch.Tensor:
    """Ascending float64 eigenvalues sigma^2 of the sampled b x b FARMS blocks of `weight`, pooled
    (or of the whole matrix when `block` exceeds one of its sides)."""
    w = weight.detach().flatten(1).double().cpu()  # a conv kernel (out, in, kh, kw): (out, rest)
    rows, cols = w.shape
    if block > rows or block > cols:
        return torch.linalg.svdvals(w).pow(2).sort().values
    corners = [
        (i, j) for i in range(0, rows - block + 1, block) for j in range(0, cols - block + 1, block)
    ]
    if len(corners) > max_blocks:
        generator = torch.Generator().manual_seed(seed)
        picked = torch.randperm(len(corners), generator=generator)[:max_blocks].sort().values
        corners = [corners[k] for k in picked.tolist()]
    blocks = torch.stack([w[i : i + block, j : j + block] for i, j in corners])
    return torch.linalg.svdvals(blocks).pow(2).flatten().sort().values


def weight_alpha(
    weight: torch.Tensor, *, block: int = 128, max_blocks: int = 256, seed: int = 0
) -> float:
    """The study's heavy-tail alpha of one weight matrix (module docstring)."""
    eigs = farms_eigenvalues(weight, block=block, max_blocks=max_blocks, seed=seed)
    logs = eigs.clamp_min(torch.finfo(torch.float64).tiny).log10()
    if eigs.numel() < 4 or float(logs.max() - logs.min()) < 1e-6:
        return float("nan")
    bins = min(100, eigs.numel() // 2)
    alpha = fit_power_law(eigs, fit="fix_finger", bins=bins).alpha
    return max(float(alpha), 1.0)


@dataclass
class HeavyTailAlphas:
    """alpha of every linear weight of the decoder blocks."""

    per_matrix: dict[str, float]  # "layers.<l>.<name in block>" -> alpha
    per_layer: torch.Tensor  # [L]: mean alpha of the block's matrices
    names: list[str]  # the matrix names inside a block (e.g. "self_attn.q_proj")

    def as_dict(self) -> dict:
        return {"per_matrix": self.per_matrix, "per_layer": self.per_layer.tolist()}


def heavy_tail_alphas(
    model: nn.Module,
    *,
    block: int = 128,
    max_blocks: int = 256,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> HeavyTailAlphas:
    """`weight_alpha` of every `nn.Linear` in the decoder blocks (or only those whose name inside
    the block is in `names`), and their mean per block. The CPU-scale study (d = 128) uses
    `block=32` (spec B.7); the paper's 8B models 128."""
    dmap = find_decoder(model)
    per_matrix: dict[str, float] = {}
    per_layer = []
    found: list[str] = []
    for layer in dmap:
        values = []
        for name, module in layer.block.named_modules():
            if not isinstance(module, nn.Linear) or (names is not None and name not in names):
                continue
            if name not in found:
                found.append(name)
            alpha = weight_alpha(module.weight, block=block, max_blocks=max_blocks, seed=seed)
            per_matrix[f"layers.{layer.index}.{name}"] = alpha
            values.append(alpha)
        if not values:
            raise ValueError(
                f"heavy_tail_alphas: block {layer.index} has no nn.Linear named {list(names or [])}"
            )
        per_layer.append(torch.tensor(values, dtype=torch.float64).nanmean())
    return HeavyTailAlphas(per_matrix, torch.stack(per_layer).float(), found)
