"""Empirical spectral density (ESD) of a weight matrix, as in HT-SR / TempBalance.

For W of shape (m, n) the ESD is the set of eigenvalues of the correlation matrix on the smaller
side, i.e. the squared singular values of W, with N = min(m, n) and no 1/N scaling:

    lambda_j = sigma_j(W)^2,   j = 1..N,   sorted ascending

TempBalance (`esd_utils.py`) obtains them as `svdvals(W)**2`. We form the N x N Gram matrix
G = W^T W (m >= n) or W W^T (m < n) and take `eigvalsh(G)`: same eigenvalues, 2-5x faster on CPU,
batched over matrices of one shape. Roundoff can push the smallest eigenvalues of G slightly below
zero; they are clamped to the smallest positive float so that their logarithm stays finite.
"""

from __future__ import annotations

import torch

__all__ = ["batched_esd", "esd"]


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ESD dtype must be torch.float32 or torch.float64, got {dtype}")


def batched_esd(weights: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Eigenvalues of W_b^T W_b for a stack `weights` of shape (B, m, n); returns (B, min(m, n)).

    Gram matrix on the smaller side + batched `torch.linalg.eigvalsh`, computed in `dtype` on the
    device the weights live on; ascending, clamped to `torch.finfo(dtype).tiny`.
    """
    _check_dtype(dtype)
    if weights.dim() != 3:
        raise ValueError(
            f"batched_esd expects a (batch, rows, cols) stack, got shape {tuple(weights.shape)}; "
            "use esd(weight) for a single matrix"
        )
    w = weights.to(dtype)
    gram = w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT
    eigs = torch.linalg.eigvalsh(gram)  # ascending
    return eigs.clamp_min(torch.finfo(dtype).tiny)


def esd(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ascending eigenvalues lambda_j = sigma_j(W)^2 of a 2-D weight, j = 1..min(m, n).

    Equals `torch.linalg.svdvals(weight) ** 2` sorted ascending (up to float roundoff).
    """
    if weight.dim() != 2:
        raise ValueError(
            f"esd expects a 2-D weight matrix, got shape {tuple(weight.shape)}; reshape it first "
            "(a convolution kernel (out, in, kh, kw) as TempBalance does: flatten the kernel dims)"
        )
    return batched_esd(weight.detach().unsqueeze(0), dtype)[0]
