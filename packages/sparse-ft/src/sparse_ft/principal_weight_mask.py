"""LIFT's Principal Weights: Liu et al., "LIFT the Veil for the Truth: Principal Weights Emerge after
Rank Reduction for Reasoning-Focused Supervised Fine-Tuning", ICML 2025 (arXiv 2506.00772).

For a weight W (m x n), take its best rank-r approximation and keep the k entries that are largest
in magnitude there:

    W' = U_r diag(S_r) V_r^T                       (truncated SVD of W, r = filter_rank)
    M  = top-k_{(i, j)} |W'_ij|                     (k = lift_budget: LoRA's parameter count)

Only the entries in M are fine-tuned. `largest=False` selects the k SMALLEST |W'_ij| instead: what the
official configs have done since July 2025 (mask type `lift_sparse`; the first release selected
the largest).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "lift_budget",
    "low_rank_approximation",
    "principal_weight_indices",
    "principal_weight_mask",
]


def lift_budget(shape: tuple[int, int] | torch.Size, lora_rank: int) -> int:
    """k = min((m + n) * lora_rank, m * n): the parameters a rank-`lora_rank` LoRA adds to an m x n W."""
    if lora_rank < 1:
        raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
    m, n = int(shape[0]), int(shape[1])
    return min((m + n) * lora_rank, m * n)


def _low_rank_fp64(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """W' = W V_r V_r^T in fp64, V_r the top-`rank` eigenvectors of the smaller fp64 Gram matrix.

    W^T W (or W W^T for a wide W) is formed in fp64, where the products of fp32 entries are exact;
    its eigenvectors span the top-r right (left) singular subspace to ~1e-15, so W' agrees with a
    full fp64 SVD's U_r S_r V_r^T to ~1e-15, far below the gaps between the |W'_ij| that the top-k
    compares (a full fp32 SVD errs by ~1e-7 there and, at llama-60m shapes, flips one entry of
    the mask in a few of the matrices). Costs one fp64 Gram and one eigh of the smaller side.
    """
    w = weight.detach().to(torch.float64)
    wide = w.shape[0] < w.shape[1]
    tall = w.T if wide else w
    basis = torch.linalg.eigh(tall.T @ tall).eigenvectors[:, -rank:]
    approx = (tall @ basis) @ basis.T
    return approx.T if wide else approx


def _refined_subspace(tall: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    """(Q_r, bound): an fp64 orthonormal basis of the top-`rank` right singular subspace of the fp64
    `tall` (M x N, M >= N) and a bound on sin of its largest angle to the exact subspace.

    The full eigendecomposition is done once in fp32 (half the time of fp64 here), then the top
    block is refined in fp64 with one Ogita-Aishima step against the exact fp64 Gram G: for the
    fp32 eigenvectors x_i outside the block and the block's columns q_j (Rayleigh quotient l_j),

        q_j <- q_j + sum_i x_i (x_i^T G q_j - l_j x_i^T q_j) / (l_j - l_i),   then QR,

    which leaves an error quadratic in the fp32 one (~1e-9 instead of ~1e-5). The bound is the
    Davis-Kahan sin-theta theorem, ||sin Theta||_2 <= ||G Q - Q Theta||_2 / delta with
    delta = lambda_min(Q^T G Q) - (an upper bound on lambda_{r+1}(G)): the fp32 eigenvalue
    mu_{r+1} plus the rounding of G to fp32 (<= 2^-24 ||G||_F) plus LAPACK's backward error
    (taken as N * 2^-24 * ||G||_2, above its usual size). inf when delta <= 0 (no gap to certify).
    """
    n = tall.shape[1]
    gram = tall.T @ tall
    mu, vectors = torch.linalg.eigh(gram.to(torch.float32))
    mu, vectors = mu.to(torch.float64), vectors.to(torch.float64)
    basis = vectors[:, n - rank :]
    g_basis = gram @ basis
    # fp64 Rayleigh quotients of the basis vectors; those far below the block keep their fp32 ones
    quotients = mu.clone()
    near = max(n - 2 * rank, 0)
    quotients[near:] = (vectors[:, near:] * (gram @ vectors[:, near:])).sum(0)
    own = (basis * g_basis).sum(0)
    coupling = vectors.T @ g_basis - own * (vectors.T @ basis)
    step = coupling / (own[None, :] - quotients[:, None])
    step[n - rank :] = 0.0  # rotations inside the block do not move the subspace
    basis = torch.linalg.qr(basis + vectors @ step).Q
    g_basis = gram @ basis
    ritz = basis.T @ g_basis
    # spectral norm of the N x r residual (its r singular values), 1% added for their rounding
    residual = 1.01 * float(torch.linalg.matrix_norm(g_basis - basis @ ritz, ord=2))
    norm_2 = float(mu.abs().max())
    next_up = float(mu[n - rank - 1]) + 2.0**-24 * (
        float(torch.linalg.matrix_norm(gram)) + n * norm_2
    )
    delta = float(torch.linalg.eigvalsh(ritz)[0]) - next_up
    if not delta > 0:
        return basis, float("inf")
    # fp64 rounding of the residual and of Q's orthonormality: far below, bounded generously
    return basis, residual / delta + 64 * n * 2.0**-53


def _certified_indices(
    weight: torch.Tensor, rank: int, k: int, largest: bool
) -> torch.Tensor | None:
    """The exact mask (`_low_rank_fp64`'s) without the fp64 eigendecomposition, or None.

    W'~ = W Q Q^T from `_refined_subspace`; each entry of row i (of the tall side) is within
    eps_i = ||w_i|| (sin_bound + 64 N 2^-53) of the exact W'. When the k chosen |W'~| entries minus
    eps still exceed every other entry plus eps (or the reverse for `largest=False`), the exact top-k
    set is unique and equal to the chosen one. Otherwise None: the caller recomputes exactly.
    """
    w = weight.detach().to(torch.float64)
    wide = w.shape[0] < w.shape[1]
    tall = w.T if wide else w
    try:
        basis, sin_bound = _refined_subspace(tall, rank)
    except torch.linalg.LinAlgError:
        return None
    if not sin_bound < 1e-4:
        return None
    approx = ((tall @ basis) @ basis.T).abs_()
    slack = tall.norm(dim=1, keepdim=True) * (sin_bound + 64 * tall.shape[1] * 2.0**-53)
    slack = slack.expand_as(approx)
    if wide:
        approx, slack = approx.T, slack.T
    approx, slack = approx.reshape(-1), slack.reshape(-1)
    chosen = torch.topk(approx, k, largest=largest, sorted=False).indices
    if k == approx.numel():
        return torch.sort(chosen).values
    if largest:
        inner = float((approx[chosen] - slack[chosen]).min())
        outer = (approx + slack).index_fill_(0, chosen, -float("inf"))
        certain = inner > float(outer.max())
    else:
        inner = float((approx[chosen] + slack[chosen]).max())
        outer = (approx - slack).index_fill_(0, chosen, float("inf"))
        certain = inner < float(outer.min())
    return torch.sort(chosen).values if certain else None


def low_rank_approximation(
    weight: torch.Tensor,
    rank: int,
    *,
    method: Literal["full", "lowrank"] = "full",
    niter: int = 2,
) -> torch.Tensor:
    """W' = U_r diag(S_r) V_r^T, the best rank-r approximation of `weight`, in fp32 (fp64 stays fp64).

    `method="full"` is exact: the top-r singular subspace from the eigenvectors of the smaller Gram
    matrix in fp64, then W V_r V_r^T in fp64, rounded once (`_low_rank_fp64`): it agrees with a full
    fp64 SVD to ~1e-15 and costs less than a full fp32 SVD. `"lowrank"` runs `torch.svd_lowrank`
    with q = min(2r, m, n) and `niter` power iterations (randomised: seed torch for
    reproducibility; an approximation that selects a different mask). A rank >= min(m, n) returns
    W itself.
    """
    _check(weight, rank)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(dtype)
    if rank >= min(w.shape):
        return w.clone()
    if method == "full":
        return _low_rank_fp64(w, rank).to(dtype)
    if method == "lowrank":
        u, s, v = torch.svd_lowrank(w, q=min(2 * rank, *w.shape), niter=niter)
        return (u[:, :rank] * s[:rank]) @ v[:, :rank].T
    raise ValueError(f"method must be 'full' or 'lowrank', got {method!r}")


def _check(weight: torch.Tensor, rank: int) -> None:
    if weight.dim() != 2:
        raise ValueError(
            f"principal weights are defined for 2-D weights, got {tuple(weight.shape)}"
        )
    if rank < 1:
        raise ValueError(f"filter rank must be >= 1, got {rank}")


def principal_weight_indices(
    weight: torch.Tensor,
    rank: int,
    k: int,
    *,
    largest: bool = True,
    method: Literal["full", "lowrank"] = "full",
    niter: int = 2,
) -> torch.Tensor:
    """Flat (row-major) indices of the k principal weights of `weight`, sorted ascending (int64).

        indices = sort(top-k_{i} |vec(W')_i|),  W' = rank-`rank` approximation of W

    `largest=False` takes the k smallest |W'_ij| (the official `lift_sparse` configs).
    `method="full"` first tries `_certified_indices` (fp32 eigendecomposition, fp64 refinement, a
    proof that the top-k set cannot differ from the exact one) and recomputes with the fp64
    eigendecomposition when the proof fails: the mask is that of `_low_rank_fp64` either way.
    """
    numel = weight.numel()
    if not 0 < k <= numel:
        raise ValueError(f"k must be in [1, {numel}] for a weight of shape {tuple(weight.shape)}")
    _check(weight, rank)
    if method == "full" and rank < min(weight.shape):
        certified = _certified_indices(weight, rank, k, largest)
        if certified is not None:
            return certified
        approx = _low_rank_fp64(weight, rank)  # ranked in fp64: no ties made by rounding
    else:
        approx = low_rank_approximation(weight, rank, method=method, niter=niter)
    chosen = torch.topk(approx.abs().reshape(-1), k, largest=largest, sorted=False).indices
    return torch.sort(chosen).values


def principal_weight_mask(
    weight: torch.Tensor,
    rank: int,
    k: int,
    *,
    largest: bool = True,
    method: Literal["full", "lowrank"] = "full",
    niter: int = 2,
) -> torch.Tensor:
    """Boolean mask (shape of `weight`) of the k entries of largest |W'_ij|, W' = rank-r approx of W.

    See `principal_weight_indices` for the arguments; `largest=False` reproduces the official
    `lift_sparse` configs (smallest entries).
    """
    indices = principal_weight_indices(weight, rank, k, largest=largest, method=method, niter=niter)
    mask = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[indices] = True
    return mask.view(weight.shape)
