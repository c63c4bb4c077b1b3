"""Massive activations and super-outliers (Sun et al., "Massive Activations in Large Language
Models", arXiv 2402.17762; the diffusion-LM super-outlier study, arXiv 2605.06366).

At each block's attention input x_l (the QKV input, i.e. after the pre-attention norm; the block
input h_l with `site="residual"`)::

    channel magnitude   c_l[k]  = mean_t |x_l,t[k]|
    max-to-median ratio MMR_l   = mean_t  max_k |x_l,t[k]| / median_k |x_l,t[k]|

A super-outlier is a channel whose magnitude dwarfs the others in (almost) every layer, e.g. hidden
dim 3848 of LLaDA-8B and 291 of Llama-3.1-8B. `outlier_channels(k)` ranks channels by their
largest magnitude over layers; zero them in the similarity metrics with `zero_channels=...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from depth_probe.capture import DepthCapture, as_capture
from layerwise_core import TokenInputs

__all__ = ["MassiveActivations", "massive_activations"]


@dataclass
class MassiveActivations:
    channel_magnitude: torch.Tensor  # [L, hidden]: mean |x| over real tokens per channel
    max_median_ratio: torch.Tensor  # [L]: mean over tokens of max|x| / median|x|
    max_abs: torch.Tensor  # [L]: largest |x| anywhere in the layer's input
    top_k: int = 4
    site: str = "attn_input"

    @property
    def top_channels(self) -> torch.Tensor:
        """[L, top_k] channels of largest mean magnitude at each layer, largest first."""
        return self.channel_magnitude.topk(self.top_k, dim=-1).indices

    def outlier_channels(self, k: int = 1) -> list[int]:
        """The k channels of largest magnitude at any layer (the super-outlier candidates)."""
        return self.channel_magnitude.amax(0).topk(k).indices.tolist()

    def as_dict(self) -> dict:
        top = self.channel_magnitude.topk(self.top_k, dim=-1)
        median = self.channel_magnitude.median(dim=-1).values.clamp_min(1e-12)
        return {
            "site": self.site,
            "max_median_ratio": self.max_median_ratio.tolist(),
            "max_abs": self.max_abs.tolist(),
            "top_channels": top.indices.tolist(),
            "top_channel_magnitude": top.values.tolist(),
            "top_channel_over_median_channel": (top.values[:, 0] / median).tolist(),
            "outlier_channels": self.outlier_channels(self.top_k),
        }


def massive_activations(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    site: Literal["attn_input", "residual"] = "attn_input",
    top_k: int = 4,
) -> MassiveActivations:
    """Per-channel magnitudes and the max-to-median ratio at every block's attention input."""
    capture = as_capture(source, input_ids, attention_mask, what="massive_activations")
    if site == "attn_input":
        if capture.attn_inputs is None or any(x is None for x in capture.attn_inputs):
            raise ValueError(
                "massive_activations: the capture has no attention inputs; pass the model, or "
                "capture with depth_probe.capture_depth(model, ids, attn_inputs=True), or use "
                "site='residual'"
            )
        values = capture.attn_inputs
    elif site == "residual":
        values = capture.stream.inputs
    else:
        raise ValueError(
            f"massive_activations: site must be 'attn_input' or 'residual', got {site!r}"
        )
    magnitude, ratio, peak = [], [], []
    for x in values:
        a = capture.real_tokens(x).float().abs()  # type: ignore[arg-type]
        magnitude.append(a.mean(0))
        ratio.append((a.amax(-1) / a.median(-1).values.clamp_min(1e-8)).mean())
        peak.append(a.amax())
    hidden = magnitude[0].numel()
    return MassiveActivations(
        channel_magnitude=torch.stack(magnitude),
        max_median_ratio=torch.stack(ratio),
        max_abs=torch.stack(peak),
        top_k=min(top_k, hidden),
        site=site,
    )
