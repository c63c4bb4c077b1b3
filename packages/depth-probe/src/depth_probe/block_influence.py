"""Block Influence (Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than
You Expect", arXiv 2403.03853)::

    BI_l = 1 - E_t [ h_l,t . h_{l+1},t / (||h_l,t|| ||h_{l+1},t||) ]

over all (real) tokens t. A block that barely turns the residual stream has BI near 0; ShortGPT
prunes the n layers of lowest BI.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.capture import DepthCapture, as_capture
from layerwise_core import TokenInputs

__all__ = ["block_influence", "lowest_influence_layers"]


def _reference_block_influence(capture: DepthCapture) -> torch.Tensor:
    """The official `shortgpt/metrics.py` + `compute_bi`: per-token 1 - cos summed over EVERY
    position (padding included), NaN cosines (zero vectors) counted as 0.5, and the last block
    compared with the HF `hidden_states[-1]`, which is taken AFTER the final norm."""
    hidden = capture.hidden_states
    if capture.stream.final_norm_output is not None:
        hidden[-1] = capture.stream.final_norm_output
    values = []
    for h_in, h_out in itertools.pairwise(hidden):
        x = h_in.reshape(-1, h_in.shape[-1])
        y = h_out.reshape(-1, h_out.shape[-1])
        sim = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
        values.append((1 - sim.nan_to_num(nan=0.5)).sum())
    return torch.stack(values).float()


def block_influence(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    zero_channels: Sequence[int] | None = None,
    reference_quirks: bool = False,
) -> torch.Tensor:
    """BI_l = 1 - mean_t cos(h_l,t, h_{l+1},t) for every block l; float32 tensor of shape [L].

    h_{l+1} is the block output before the final norm (the last block is not compared with a
    normed vector), and padding positions are left out of the mean.

    Args:
        source: a model (then `input_ids` are run through it once) or a `DepthCapture`.
        zero_channels: hidden channels set to 0 before the cosines (e.g. a massive-activation
            channel that dominates every cosine).
        reference_quirks: reproduce the official ShortGPT code instead: a SUM over all positions
            (padding included), NaN cosines as 0.5, and the last block compared with the
            final-normed hidden state (the final-norm trap of `output_hidden_states`).
    """
    capture = as_capture(source, input_ids, attention_mask, what="block_influence")
    capture = capture.zero_channels(zero_channels)
    if reference_quirks:
        return _reference_block_influence(capture)
    hidden = capture.hidden_states
    values = []
    for h_in, h_out in itertools.pairwise(hidden):
        cos = F.cosine_similarity(
            capture.real_tokens(h_in).float(), capture.real_tokens(h_out).float(), dim=-1
        )
        values.append(1 - cos.mean())
    return torch.stack(values)


def lowest_influence_layers(influence: torch.Tensor | Sequence[float], n: int) -> list[int]:
    """The `n` layers of lowest block influence (ShortGPT's pruning choice), in ascending order."""
    values = torch.as_tensor(influence, dtype=torch.float64)
    if not 0 <= n <= values.numel():
        raise ValueError(f"lowest_influence_layers: n={n} must be in [0, {values.numel()}]")
    return sorted(torch.argsort(values, stable=True)[:n].tolist())
