"""How much each sublayer writes into the residual stream (Csordas et al., "Do Language Models Use
Their Depth Efficiently?", arXiv 2505.13898), and the per-layer output variance (the Curse-of-Depth
signal, Sun et al., arXiv 2502.05795).

With h_l the stream entering block l, a_l the attention output and m_l the MLP output::

    attn_ratio  = ||a_l|| / ||h_l||            attn_cos  = cos(a_l, h_l)
    mlp_ratio   = ||m_l|| / ||h_l + a_l||      mlp_cos   = cos(m_l, h_l + a_l)
    block_ratio = ||a_l + m_l|| / ||h_l||      block_cos = cos(h_{l+1}, h_l)

each averaged over real tokens. Small ratios mean a layer only nudges the stream; negative
cosines mean it erases what is there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.capture import DepthCapture, as_capture
from layerwise_core import TokenInputs

__all__ = ["ResidualContributions", "output_variance", "residual_contributions"]


@dataclass
class ResidualContributions:
    """Per-layer means over real tokens; each field is a float32 tensor of shape [L]."""

    attn_ratio: torch.Tensor
    mlp_ratio: torch.Tensor
    block_ratio: torch.Tensor
    attn_cos: torch.Tensor
    mlp_cos: torch.Tensor
    block_cos: torch.Tensor

    def as_dict(self) -> dict[str, list[float]]:
        return {f.name: getattr(self, f.name).tolist() for f in fields(self)}


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return (numerator.norm(dim=-1) / denominator.norm(dim=-1).clamp_min(1e-12)).mean()


def residual_contributions(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
) -> ResidualContributions:
    """Csordas et al.'s norm ratios and cosines of attention and MLP outputs, per layer.

    For parallel-residual blocks (GPT-NeoX) the MLP reads h_l, not h_l + a_l; the mlp_* values are
    still taken against h_l + a_l, the stream the MLP output is added to.
    """
    capture = as_capture(source, input_ids, attention_mask, what="residual_contributions")
    stream = capture.stream
    if any(t is None for t in stream.attn_outputs) or any(t is None for t in stream.mlp_outputs):
        raise ValueError(
            "residual_contributions: the capture lacks attention or MLP outputs; capture with "
            "kinds=('inputs', 'attn_outputs', 'mlp_outputs', 'outputs') (the default of "
            "depth_probe.capture_depth)"
        )
    out: dict[str, list[torch.Tensor]] = {f.name: [] for f in fields(ResidualContributions)}
    for h, a, m, h_next in zip(
        stream.inputs, stream.attn_outputs, stream.mlp_outputs, stream.outputs
    ):
        h, a, m, h_next = (capture.real_tokens(t).float() for t in (h, a, m, h_next))  # type: ignore[arg-type]
        mid = h + a
        out["attn_ratio"].append(_ratio(a, h))
        out["mlp_ratio"].append(_ratio(m, mid))
        out["block_ratio"].append(_ratio(a + m, h))
        out["attn_cos"].append(F.cosine_similarity(a, h, dim=-1).mean())
        out["mlp_cos"].append(F.cosine_similarity(m, mid, dim=-1).mean())
        out["block_cos"].append(F.cosine_similarity(h_next, h, dim=-1).mean())
    return ResidualContributions(**{k: torch.stack(v) for k, v in out.items()})


def output_variance(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Var over hidden units of each block's output h_{l+1} (before the final norm), averaged over
    real tokens; float32 [L]. Under Pre-LN it grows with depth (the Curse of Depth)."""
    capture = as_capture(source, input_ids, attention_mask, what="output_variance")
    return torch.stack(
        [capture.real_tokens(h).float().var(dim=-1).mean() for h in capture.hidden_states[1:]]
    )
