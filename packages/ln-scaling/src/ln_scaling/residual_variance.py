"""The Curse-of-Depth signal: variance of the residual stream entering each block.

Under Pre-LN, Var(h_l) grows with depth (up to exponentially in the paper's analysis), so the
derivative of deep blocks approaches identity; LNS bounds that growth (polynomially).
"""

from __future__ import annotations

import torch
from torch import nn

from layerwise_core import capture_residual_stream

__all__ = ["residual_variance"]


def residual_variance(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Var over hidden units of h_l, averaged over tokens, for l = 0..L (h_L = last block output,
    before the final norm). Returns a float32 tensor of shape [L + 1]; one forward pass."""
    stream = capture_residual_stream(
        model,
        input_ids,
        attention_mask,
        reduce=lambda h: h.float().var(-1),
        logits=False,
        kinds=("inputs", "outputs"),
    )
    per_token = [v for v in stream.hidden_states]
    if attention_mask is not None:
        weights = attention_mask.float()
        return torch.stack([(v * weights).sum() / weights.sum() for v in per_token])
    return torch.stack([v.mean() for v in per_token])
