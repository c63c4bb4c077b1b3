"""Masked copies of clean token windows: what a masked-diffusion LM sees when it is probed or
calibrated (the layer-collapse study, arXiv 2605.06366, `diffusion_masking.py` of its code).

For each window x (in order) and each of its `copies` (k = 0..copies-1)::

    t ~ U[0, 1]                         one noise level per copy
    x_t[i] = [MASK] with probability t  independently per token, else x[i]

Shared by depth-probe (the study's metrics on masked inputs) and sparse-ft (masked calibration of
pruning / quantisation), so both see the same masks for the same seed.
"""

from __future__ import annotations

import torch

__all__ = ["masked_copies"]


def masked_copies(
    input_ids: torch.Tensor,
    mask_token_id: int,
    copies: int = 4,
    *,
    seed: int = 0,
    maskable: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N * copies, T) ids: `copies` independently masked copies of each of the N windows, copies of
    one window adjacent (rows n * copies .. n * copies + copies - 1 come from window n).

    Draws (from a CPU generator seeded with `seed`, window by window, copy by copy): t ~ U[0, 1],
    then u ~ U[0, 1]^T; token i is masked iff u_i < t. `maskable` (N, T) bool limits masking (e.g.
    to real tokens, not padding); the draws are the same with or without it.
    """
    if input_ids.dim() != 2:
        raise ValueError(
            f"masked_copies: input_ids must be (windows, tokens), got {tuple(input_ids.shape)}"
        )
    if copies < 1:
        raise ValueError(f"masked_copies: copies must be >= 1, got {copies}")
    if maskable is not None and maskable.shape != input_ids.shape:
        raise ValueError(
            f"masked_copies: maskable {tuple(maskable.shape)} must match input_ids "
            f"{tuple(input_ids.shape)}"
        )
    generator = torch.Generator().manual_seed(seed)
    windows, length = input_ids.shape
    rows = []
    for n in range(windows):
        for _ in range(copies):
            t = torch.rand(1, generator=generator)
            masked = (torch.rand(length, generator=generator) < t).to(input_ids.device)
            if maskable is not None:
                masked &= maskable[n].bool()
            rows.append(input_ids[n].masked_fill(masked, mask_token_id))
    return torch.stack(rows)
