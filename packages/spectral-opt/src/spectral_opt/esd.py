"""Empirical spectral density (ESD) of a weight matrix, as in HT-SR / TempBalance.

For W of shape (m, n) the ESD is the set of eigenvalues of the correlation matrix on the smaller
side, i.e. the squared singular values of W, with N = min(m, n) and no 1/N scaling:

    lambda_j = sigma_j(W)^2,   j = 1..N,   sorted ascending

TempBalance (`esd_utils.py`) obtains them as `svdvals(W)**2`. We form the N x N Gram matrix
G = W^T W (m >= n) or W W^T (m < n) and take `eigvalsh(G)`: same eigenvalues, 2-5x faster on CPU,
batched over matrices of one shape.

Precision. `svdvals` resolves sigma to ~eps * sigma_max, so lambda = sigma^2 keeps a relative error
of ~eps * sigma_max / sigma_j; the Gram route squares the condition number: float32 `eigvalsh(G)`
has an absolute error of c * eps * lambda_max (c measured 2-135 for N = 60-2048, growing with N), so
an eigenvalue far below lambda_max is noise, possibly negative. A square random matrix has
lambda_min / lambda_max ~ 1 / (4 N^2), and the fits that read the bottom of the spectrum
(`fix_finger` starts its log-histogram at the smallest eigenvalue; `goodness_of_fit` scans every
x_min) then return another alpha than float64 does (issue 21: up to 15 apart). The error grows
~N, so in float32 a matrix whose eigenvalues from index `accurate_from` up are not all >=
N * lambda_max / 2^20 (where float32 was within 4.3e-5 relative of float64 for N = 512-2048,
Gaussian and Student-t weights) is recomputed in float64: Gram and `eigvalsh` of the same weights.
A Cholesky factorisation of G - tau I (N^3 / 3 flops, ~1/5 of
`eigvalsh`) predicts, before `eigvalsh`, which matrices need it when every eigenvalue must be
accurate; only the check on the computed spectrum decides. Whatever remains <= 0 (an exactly
rank-deficient matrix) is clamped to the smallest positive float so that its logarithm stays finite.
"""

from __future__ import annotations

import torch

__all__ = ["batched_esd", "esd"]

_RESOLVED = 2.0**-20  # float32 Gram eigenvalues >= N * this * lambda_max: within ~1e-4 relative


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ESD dtype must be torch.float32 or torch.float64, got {dtype}")


def _gram(w: torch.Tensor) -> torch.Tensor:
    return w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT


def _resolved(eigs: torch.Tensor, accurate_from: int) -> torch.Tensor:
    """Rows of ascending float32 spectra whose eigenvalues from `accurate_from` up are resolved."""
    return eigs[:, accurate_from] >= eigs.shape[-1] * _RESOLVED * eigs[:, -1]


def _likely_resolved(gram: torch.Tensor) -> torch.Tensor:
    """Cheap forecast of `_resolved(eigvalsh(gram), 0)`: is G - tau I positive definite, with tau
    = N * _RESOLVED * (root mean square eigenvalue = ||G||_F / sqrt(N) <= lambda_max)?"""
    n = gram.shape[-1]
    tau = n * _RESOLVED * torch.linalg.matrix_norm(gram) / n**0.5
    shifted = gram - tau[:, None, None] * torch.eye(n, dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky_ex(shifted).info == 0


def batched_esd(
    weights: torch.Tensor, dtype: torch.dtype = torch.float32, accurate_from: int = 0
) -> torch.Tensor:
    """Eigenvalues of W_b^T W_b for a stack `weights` of shape (B, m, n); returns (B, min(m, n)).

    Gram matrix on the smaller side + batched `torch.linalg.eigvalsh`, computed in `dtype` on the
    device the weights live on; ascending, clamped to `torch.finfo(dtype).tiny`.

    `accurate_from` (float32 only): the smallest ascending index whose eigenvalue must be accurate
    (to ~1e-4 relative, as float64 gives it for a matrix of full rank); a matrix where float32
    cannot resolve it (it is below N * lambda_max / 2^20) is recomputed in float64 and returned as
    float32. 0 (default): every eigenvalue; `int(N / 2)` suits the median Hill fit; >= N: plain
    float32 (fastest, the bottom of an ill-conditioned spectrum is then roundoff).
    """
    return esd_float64(weights, dtype, accurate_from).to(dtype).clamp_min(torch.finfo(dtype).tiny)


def esd_float64(
    weights: torch.Tensor, dtype: torch.dtype = torch.float32, accurate_from: int = 0
) -> torch.Tensor:
    """`batched_esd` returned in float64 (the Hill fits' precision): the matrices recomputed in
    float64 keep their float64 eigenvalues; float32 ones are clamped to float32's `tiny`."""
    _check_dtype(dtype)
    if weights.dim() != 3:
        raise ValueError(
            f"batched_esd expects a (batch, rows, cols) stack, got shape {tuple(weights.shape)}; "
            "use esd(weight) for a single matrix"
        )
    if accurate_from < 0:
        raise ValueError(f"accurate_from must be >= 0 (an eigenvalue index), got {accurate_from}")
    gram = _gram(weights.to(dtype))
    n = gram.shape[-1]
    tiny = torch.finfo(dtype).tiny
    if dtype == torch.float64 or accurate_from >= n or weights.shape[0] == 0:
        return torch.linalg.eigvalsh(gram).clamp_min(tiny).double()  # ascending
    eigs = torch.empty(gram.shape[:-1], dtype=torch.float64, device=gram.device)
    fine = _likely_resolved(gram) if accurate_from == 0 else torch.ones_like(eigs[:, 0]).bool()
    if bool(fine.any()):
        computed = torch.linalg.eigvalsh(gram[fine])
        eigs[fine] = computed.clamp_min(tiny).double()
        fine[fine.clone()] = _resolved(computed, accurate_from)
    del gram
    again = (~fine).nonzero().flatten()
    step = max(1, weights.shape[0] // 2)  # float64 copies no larger than the float32 stack
    for start in range(0, again.numel(), step):
        rows = again[start : start + step]
        eigs[rows] = torch.linalg.eigvalsh(_gram(weights[rows].to(torch.float64)))
    return eigs.clamp_min(torch.finfo(torch.float64).tiny)


def esd(
    weight: torch.Tensor, dtype: torch.dtype = torch.float32, accurate_from: int = 0
) -> torch.Tensor:
    """Ascending eigenvalues lambda_j = sigma_j(W)^2 of a 2-D weight, j = 1..min(m, n).

    Equals `torch.linalg.svdvals(weight) ** 2` sorted ascending (up to float roundoff; in float32
    every eigenvalue to ~1e-4 relative, see `batched_esd` for `accurate_from`).
    """
    if weight.dim() != 2:
        raise ValueError(
            f"esd expects a 2-D weight matrix, got shape {tuple(weight.shape)}; reshape it first "
            "(a convolution kernel (out, in, kh, kw) as TempBalance does: flatten the kernel dims)"
        )
    return batched_esd(weight.detach().unsqueeze(0), dtype, accurate_from)[0]
