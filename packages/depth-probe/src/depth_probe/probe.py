"""Every single-pass depth metric from ONE forward pass: `probe(model, input_ids, attention_mask)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from depth_probe.angular_distance import AngularDistances, angular_distance
from depth_probe.block_influence import block_influence
from depth_probe.capture import DepthCapture, capture_depth
from depth_probe.cka import cka_matrix
from depth_probe.logit_lens import LogitLens, logit_lens
from depth_probe.massive_activations import MassiveActivations, massive_activations
from depth_probe.residual_contributions import (
    ResidualContributions,
    output_variance,
    residual_contributions,
)
from depth_probe.similarity import SIMILARITY_VARIANTS, similarity_matrix
from layerwise_core import TokenInputs

__all__ = ["DepthProbe", "probe"]


@dataclass
class DepthProbe:
    """All single-pass metrics of one model on one batch (see each function for definitions)."""

    num_layers: int
    num_tokens: int
    block_influence: torch.Tensor  # [L]
    angular_distance: AngularDistances
    residual_contributions: ResidualContributions
    output_variance: torch.Tensor  # [L]
    logit_lens: LogitLens | None  # h_0 .. h_L
    cka: torch.Tensor  # [L+1, L+1]
    similarity: dict[str, torch.Tensor]  # variant -> [L-1, L-1]
    massive_activations: MassiveActivations  # at the attention (QKV) inputs
    massive_residual: MassiveActivations  # in the residual stream h_l
    zero_channels: list[int]
    similarity_zeroed: dict[str, torch.Tensor]  # the same with `zero_channels` zeroed

    def as_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "num_tokens": self.num_tokens,
            "block_influence": self.block_influence.tolist(),
            "angular_distance": self.angular_distance.as_dict(),
            "residual_contributions": self.residual_contributions.as_dict(),
            "output_variance": self.output_variance.tolist(),
            "logit_lens": None if self.logit_lens is None else self.logit_lens.as_dict(),
            "cka": self.cka.tolist(),
            "similarity": {k: v.tolist() for k, v in self.similarity.items()},
            "massive_activations": self.massive_activations.as_dict(),
            "massive_residual": self.massive_residual.as_dict(),
            "zero_channels": self.zero_channels,
            "similarity_zeroed": {k: v.tolist() for k, v in self.similarity_zeroed.items()},
        }


def probe(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    zero_channels: Sequence[int] | Literal["auto"] | None = "auto",
    top_k: int = 4,
    lens_max_tokens: int | None = 512,
) -> DepthProbe:
    """Run the model once (`capture_depth`) and compute every single-pass metric from that capture.

    Args:
        zero_channels: channels to zero for the `similarity_zeroed` matrices; "auto" takes the
            residual stream's top outlier channel (`massive_activations(..., site="residual")
            .outlier_channels(1)`), None skips.
        top_k: channels listed per layer by `massive_activations`.
        lens_max_tokens: the logit lens decodes at most this many real tokens, evenly spaced
            (None: all); every other metric uses every real token.
    """
    if isinstance(source, DepthCapture):
        capture = source
    else:
        if input_ids is None:
            raise ValueError("probe: pass input_ids with the model, e.g. probe(model, ids)")
        capture = capture_depth(source, input_ids, attention_mask)
    massive = massive_activations(capture, top_k=top_k)
    residual = massive_activations(capture, site="residual", top_k=top_k)
    if zero_channels == "auto":
        zeroed = residual.outlier_channels(1)
    else:
        zeroed = list(zero_channels or [])
    has_lens = (
        capture.decoder_map is not None
        and capture.decoder_map.lm_head is not None
        and capture.stream.logits is not None
        and capture.input_ids is not None
    )
    multi = capture.num_layers >= 2
    return DepthProbe(
        num_layers=capture.num_layers,
        num_tokens=int(capture.mask.sum()),
        block_influence=block_influence(capture),
        angular_distance=angular_distance(capture),
        residual_contributions=residual_contributions(capture),
        output_variance=output_variance(capture),
        logit_lens=logit_lens(capture, max_tokens=lens_max_tokens) if has_lens else None,
        cka=cka_matrix(capture),
        similarity={v: similarity_matrix(capture, variant=v) for v in SIMILARITY_VARIANTS if multi},
        massive_activations=massive,
        massive_residual=residual,
        zero_channels=zeroed,
        similarity_zeroed={
            v: similarity_matrix(capture, variant=v, zero_channels=zeroed)
            for v in SIMILARITY_VARIANTS
            if multi and zeroed
        },
    )
