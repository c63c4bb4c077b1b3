"""Pure-torch grouped matmul: the reference the Triton kernel is tested against.

One `torch.mm` per group over its contiguous slice of rows; the backward is torch autograd's.
"""

from __future__ import annotations

import torch


def grouped_mm_naive(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """out[s_g:e_g] = x[s_g:e_g] @ weight[g], with e_g = offsets[g] and s_g = offsets[g - 1] (s_0 = 0).

    A Python loop over the groups (one host sync to read `offsets`): simple and exact, not fast.
    """
    pieces = []
    start = 0
    for group, end in enumerate(offsets.tolist()):
        pieces.append(x[start:end] @ weight[group])
        start = end
    return torch.cat(pieces)
