"""Magnitude pruning (Han et al., "Learning both Weights and Connections", NeurIPS 2015): zero the
entries of smallest |W|, over the whole matrix (as in the Wanda / SparseGPT / OWL code bases), or
the N smallest of every M consecutive inputs of a row."""

from __future__ import annotations

import torch

from sparse_ft.nm_sparsity import nm_prune_mask

__all__ = ["lowest_fraction_mask", "magnitude_prune_mask"]


def lowest_fraction_mask(
    scores: torch.Tensor, sparsity: float, *, reference_quirks: bool = False
) -> torch.Tensor:
    """True at the int(numel * sparsity) lowest scores of the whole tensor (stable order for ties).

    `reference_quirks=True`: the official threshold rule `scores <= sort(scores)[int(numel * s)]`,
    which also zeroes the threshold entry itself (and any ties), one more than asked.
    """
    flat = scores.reshape(-1)
    count = int(flat.numel() * sparsity)
    if reference_quirks:
        if count >= flat.numel():
            return torch.ones_like(scores, dtype=torch.bool)
        threshold = torch.sort(flat)[0][count]
        return scores <= threshold
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    mask[torch.sort(flat, stable=True).indices[:count]] = True
    return mask.view(scores.shape)


def magnitude_prune_mask(
    weight: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    *,
    reference_quirks: bool = False,
) -> torch.Tensor:
    """Mask of the weights to zero (True): smallest |W| per matrix, or per N:M group."""
    scores = weight.detach().abs().float()
    if nm is not None:
        return nm_prune_mask(scores, *nm)
    return lowest_fraction_mask(scores, sparsity, reference_quirks=reference_quirks)
