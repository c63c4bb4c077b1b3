"""Attention entropy per layer and head: the mechanism MEAP's paper gives for its retrieval gains.

Zhuang et al., arXiv 2502.07490, Sec. 5: masking part of the input makes the model attend to fewer,
unmasked tokens, so its attention scores become more distinguishable (more concentrated). For the
causal attention distribution a_{q,k} of query q over the keys k <= q that it may see,

    H_q = -sum_k a_{q,k} log a_{q,k}                     (nats; 0 log 0 = 0)
    H   = mean over the real (non-padding) queries of every row        per layer, per head

and with `normalize=True` each H_q is divided by log(n_q), the entropy of the uniform distribution
over its n_q visible keys (queries with a single visible key are left out), so 1 means uniform and
0 one-hot. Lower entropy = more concentrated attention.
"""

from __future__ import annotations

from typing import Any

import torch

from layerwise_core import TokenInputs, renamed_kwargs, token_inputs

__all__ = ["attention_entropy"]


@torch.no_grad()
@renamed_kwargs(batch="input_ids")
def attention_entropy(
    model: Any,
    input_ids: TokenInputs,
    *,
    attention_mask: torch.Tensor | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """(num_layers, num_heads) mean entropy of the attention distributions (module docstring).

    `input_ids` is a token-id tensor (B, T) (or (T,) for one row) or a batch mapping with
    "input_ids" (and "attention_mask"). The model runs once in eval mode with eager attention
    (switched on for the call and restored: the fused kernels do not return attention weights);
    its training flag is restored too.
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="attention_entropy")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(input_ids.device)
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(
            f"{type(model).__name__} cannot switch to eager attention; attention_entropy needs a "
            "Hugging Face PreTrainedModel (transformers >= 4.48)"
        )
    previous = model.config._attn_implementation
    was_training = model.training
    model.eval()
    try:
        model.set_attn_implementation("eager")
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)
    if not out.attentions:
        raise RuntimeError(f"{type(model).__name__} returned no attention weights")

    real = attention_mask.bool()  # (B, T)
    visible = torch.cumsum(real.long(), dim=1)  # keys k <= q that are real
    queries = real & (visible > 1) if normalize else real
    weights = queries.double()  # (B, T)
    rows = []
    for probs in out.attentions:  # (B, H, T, T)
        entropy = -torch.xlogy(probs.double(), probs.double()).sum(dim=-1)  # (B, H, T)
        if normalize:
            entropy = entropy / torch.log(visible.clamp(min=2).double())[:, None, :]
        total = (entropy * weights[:, None, :]).sum(dim=(0, 2))
        rows.append(total / weights.sum().clamp(min=1))
    return torch.stack(rows).float()
