"""Wanda: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
ICLR 2024 (arXiv 2306.11695; code locuslab/wanda, `lib/prune.py::prune_wanda`).

Score every weight by its magnitude times the norm of the input feature it multiplies,

    S_ij = |W_ij| * ||X_j||_2,        ||X_j||_2^2 = (1 / N) sum_{sequences, tokens} x_j^2

(N = number of calibration sequences, the official running mean), and compare scores only within
an output row: each row loses its int(n_in * s) lowest-scoring weights, or, under N:M sparsity, the
N lowest of every M consecutive inputs.
"""

from __future__ import annotations

import torch

from sparse_ft.nm_sparsity import nm_prune_mask

__all__ = ["InputNormStatistics", "wanda_prune_mask", "wanda_scores"]


class InputNormStatistics:
    """Running ||X_j||^2 of a Linear's inputs over calibration batches (the official `scaler_row`).

    scaler_j = (1 / N) sum_{b, t} x_{b, t, j}^2       N = sequences seen so far
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.sequences = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        """`inputs`: [batch, tokens, in_features] (or [tokens, in_features] for one sequence)."""
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        self.sequences += inputs.shape[0]
        x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float64)
        self.sum_sq += (x * x).sum(0)

    @property
    def scaler_row(self) -> torch.Tensor:
        if self.sequences == 0:
            raise RuntimeError("no calibration batch was seen: run the calibration forward first")
        return (self.sum_sq / self.sequences).float()


def wanda_scores(weight: torch.Tensor, scaler_row: torch.Tensor) -> torch.Tensor:
    """S = |W| * sqrt(scaler_row)[None, :] (fp32), scaler_row = ||X_j||^2 per input feature."""
    if scaler_row.shape != (weight.shape[1],):
        raise ValueError(
            f"scaler_row must hold one value per input feature ({weight.shape[1]}), "
            f"got shape {tuple(scaler_row.shape)}"
        )
    return weight.detach().abs().float() * torch.sqrt(scaler_row.float()).reshape(1, -1)


def wanda_prune_mask(
    scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """True at the weights to zero: per row the int(n_in * s) lowest scores (stable sort), or N:M."""
    if nm is not None:
        return nm_prune_mask(scores, *nm)
    count = int(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    lowest = torch.sort(scores, dim=-1, stable=True).indices[:, :count]
    mask.scatter_(1, lowest, True)
    return mask
