"""N:M semi-structured sparsity: in every group of M consecutive input columns of a row, N are zero.

"2:4" (N=2 zeros out of M=4) is what NVIDIA sparse tensor cores accelerate (Mishra et al., "Accelerating
Sparse Deep Neural Networks", arXiv 2104.08378); Wanda and SparseGPT prune to it by zeroing, in
each group, the N entries of lowest score.
"""

from __future__ import annotations

import torch

__all__ = ["is_nm_sparse", "nm_prune_mask", "parse_nm"]


def parse_nm(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): N zeros in every M consecutive weights of a row."""
    try:
        n_text, m_text = pattern.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise ValueError(f"an N:M pattern looks like '2:4', got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"an N:M pattern needs 0 < N < M, got {pattern!r}")
    return n, m


def _groups(scores: torch.Tensor, m: int) -> torch.Tensor:
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(
            f"N:M sparsity needs the input dimension ({cols}) to be a multiple of M={m}; "
            "leave this matrix out of the pruning or choose another M"
        )
    return scores.reshape(rows, cols // m, m)


def nm_prune_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True at the N lowest scores of every group of M consecutive columns of each row (to zero)."""
    groups = _groups(scores, m)
    lowest = torch.topk(groups, n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, lowest, True)
    return mask.reshape(scores.shape)


def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M consecutive weights of each row holds at least N zeros."""
    zeros = (_groups(weight, m) == 0).sum(-1)
    return bool((zeros >= n).all())
