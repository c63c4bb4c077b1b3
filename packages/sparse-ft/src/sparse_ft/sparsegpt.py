"""SparseGPT: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", ICML 2023 (arXiv 2301.00774; code IST-DASLab/sparsegpt, `sparsegpt.py::fasterprune`).

Layer-wise reconstruction min ||W X - W' X||^2 with an approximate Optimal Brain Surgeon update:

    H = (2 / N) sum X X^T  (+ damping: 1% of mean(diag H) on the diagonal; dead inputs H_jj = 1, W_:j = 0)
    U = chol(H^-1) upper triangular
    for each block of B columns: mask the lowest  w_ij^2 / U_jj^2  (fraction s of the block, or N:M),
    then column by column:   err = (w_:,i - q_:,i) / U_ii,   W_:, i: -= err U_i, i:
    and push the block's errors into the columns to its right.
"""

from __future__ import annotations

import torch

from sparse_ft.magnitude import lowest_fraction_mask

__all__ = ["HessianStatistics", "sparsegpt_prune"]


class HessianStatistics:
    """H = (2 / N) sum_{sequences, tokens} x x^T of a Linear's inputs, N = sequences seen (fp32)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.sum_xxt = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.sequences = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
        self.sequences += inputs.shape[0]
        x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float64)
        self.sum_xxt += x.T @ x

    @property
    def hessian(self) -> torch.Tensor:
        if self.sequences == 0:
            raise RuntimeError("no calibration batch was seen: run the calibration forward first")
        return (2.0 * self.sum_xxt / self.sequences).float()


def _upper_cholesky_of_inverse(h: torch.Tensor, percdamp: float, retries: int = 6) -> torch.Tensor:
    """U with U^T U = (H + damp I)^-1; raise the damping tenfold while Cholesky fails."""
    diag = torch.arange(h.shape[0], device=h.device)
    damp = percdamp * torch.mean(torch.diag(h))
    for _ in range(retries):
        damped = h.clone()
        damped[diag, diag] += damp
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp = damp * 10
    raise RuntimeError(
        "SparseGPT: the calibration Hessian is not positive definite even with 10^5 times the "
        "damping; use more calibration tokens or raise percdamp"
    )


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    reference_quirks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune and reconstruct `weight` [out, in] with the OBS updates; returns (new W, zeroed mask).

    The mask of each block of `blocksize` columns holds int(s * rows * cols_in_block) entries of
    lowest w^2 / U_jj^2; `reference_quirks=True` uses the official threshold rule
    `score <= sort(score)[int(numel * s)]` (one entry more). With `nm=(N, M)` the N lowest of every
    M columns are chosen when the column group starts, from the already-updated weights.
    """
    cols = weight.shape[1]
    if nm is not None and blocksize % nm[1]:
        raise ValueError(f"blocksize ({blocksize}) must be a multiple of M={nm[1]} for N:M")
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    hinv = _upper_cholesky_of_inverse(h, percdamp)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        if nm is None:
            mask1 = lowest_fraction_mask(
                w1**2 / d.reshape(1, -1) ** 2, sparsity, reference_quirks=reference_quirks
            )
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            if nm is not None and i % nm[1] == 0:
                scores = w1[:, i : i + nm[1]] ** 2 / d[i : i + nm[1]].reshape(1, -1) ** 2
                lowest = torch.topk(scores, nm[0], dim=1, largest=False).indices
                mask1.scatter_(1, i + lowest, True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype), pruned
