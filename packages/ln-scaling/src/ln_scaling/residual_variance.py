"""The Curse-of-Depth signal: variance of the residual stream entering each block.

Under Pre-LN, Var(h_l) grows with depth (up to exponentially in the paper's analysis), so the
derivative of deep blocks approaches identity; LNS bounds that growth (polynomially).
"""

from __future__ import annotations

import torch
from torch import nn

from layerwise_core import TokenInputs, capture_residual_stream, token_inputs

__all__ = ["residual_variance"]


def residual_variance(
    model: nn.Module, input_ids: TokenInputs, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Var over hidden units of h_l, averaged over real tokens, for l = 0..L (h_L = last block
    output, before the final norm). Returns a float32 tensor of shape [L + 1]; one forward pass.

    `input_ids`: (batch, seq) token ids with `attention_mask=...`, or a batch mapping with
    "input_ids" (and "attention_mask").
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="residual_variance")
    if input_ids is None:
        raise ValueError("residual_variance: input_ids is required")
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
