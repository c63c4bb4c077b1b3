"""Layer collapse and redundancy of the DLM-vs-AR study (arXiv 2605.06366; study spec B.3.5-6).

With S the (L-1) x (L-1) similarity of the block outputs h_1 .. h_{L-1} (`similarity_matrix`:
pooled / per-token / per-token detrended; the last block is left out)::

    redundancy profile    rho_l = S^tok_{l,l+1}                          l = 0 .. L-3
    early-vs-late         C = mean(rho over the first third) - mean(rho over the last third)
    collapse run          the longest run of consecutive layers i..j with S^tok_{a,b} >= 0.9 for
                          every a, b in the run (earliest on ties)
    outlier share         drop of the pooled S (mean over layer pairs a != b) once the super-outlier
                          channel c* is zeroed in the captured activations (forward unchanged)

The claim: C > 0 for a diffusion LM (redundancy sits early), C < 0 for an AR LM. "Third" = the first
and last max(1, n // 3) entries of the n-entry profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from depth_probe.capture import token_mask
from depth_probe.similarity import SIMILARITY_VARIANTS, similarity_from_sums, similarity_sums
from layerwise_core import TokenInputs, capture_residual_stream, find_decoder, token_inputs

__all__ = [
    "LayerCollapse",
    "LayerSimilarities",
    "collapse_run",
    "early_late_contrast",
    "layer_collapse",
    "layer_similarities",
    "redundancy_profile",
]


@dataclass
class LayerSimilarities:
    """Every similarity variant of the block outputs h_1 .. h_{L-1}, with and without channels."""

    matrices: dict[str, torch.Tensor]  # variant -> [L-1, L-1]
    zeroed: dict[str, torch.Tensor] | None  # the same with `zero_channels` set to 0, or None
    zero_channels: list[int]
    tokens: int

    def as_dict(self) -> dict:
        out = {"tokens": self.tokens, "zero_channels": self.zero_channels}
        out["matrices"] = {k: v.tolist() for k, v in self.matrices.items()}
        if self.zeroed is not None:
            out["zeroed"] = {k: v.tolist() for k, v in self.zeroed.items()}
        return out


@torch.no_grad()
def layer_similarities(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    zero_channels: Sequence[int] | None = None,
    batch_size: int = 8,
) -> LayerSimilarities:
    """`similarity_matrix` in its three variants over many windows, streamed over batches (the
    sums of `similarity_sums` add up; one forward per batch, stopped after block L-2), and again
    with `zero_channels` (e.g. the super-outlier c*) zeroed in the captured outputs only.
    A diffusion LM is probed on masked inputs: pass `diffusion_probe_inputs(model, ids)`."""
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="layer_similarities")
    if input_ids is None:
        raise ValueError("layer_similarities: input_ids is required")
    dmap = find_decoder(model)
    if len(dmap) < 3:
        raise ValueError(
            f"layer_similarities: needs at least 3 blocks (2 compared outputs), got {len(dmap)}"
        )
    channels = [int(c) for c in zero_channels or ()]
    mask_all = token_mask(input_ids, attention_mask)
    totals: dict[str, torch.Tensor] = {}
    zeroed_totals: dict[str, torch.Tensor] = {}
    tokens = 0
    for start in range(0, input_ids.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        stream = capture_residual_stream(
            model,
            input_ids[rows],
            None if attention_mask is None else attention_mask[rows],
            kinds=("outputs",),
            layers=range(len(dmap) - 1),
            logits=False,
            decoder_map=dmap,
        )
        mask = mask_all[rows]
        stacked = torch.stack([o[mask.to(o.device)].float().cpu() for o in stream.outputs[:-1]])
        tokens += stacked.shape[1]
        for key, value in similarity_sums(stacked).items():
            totals[key] = totals[key] + value if key in totals else value
        if channels:
            stacked[..., channels] = 0
            for key, value in similarity_sums(stacked).items():
                zeroed_totals[key] = zeroed_totals[key] + value if key in zeroed_totals else value
    matrices = {v: similarity_from_sums(totals, tokens, v) for v in SIMILARITY_VARIANTS}
    zeroed = (
        {v: similarity_from_sums(zeroed_totals, tokens, v) for v in SIMILARITY_VARIANTS}
        if channels
        else None
    )
    return LayerSimilarities(matrices, zeroed, channels, tokens)


def redundancy_profile(similarity: torch.Tensor) -> torch.Tensor:
    """rho_l = S_{l,l+1}: the similarity of each block output with the next one ([K-1] of [K, K])."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"redundancy_profile: needs a square matrix, got {similarity.shape}")
    return similarity.diagonal(offset=1).clone()


def early_late_contrast(profile: torch.Tensor) -> float:
    """mean(rho over the first third) - mean(rho over the last third), third = max(1, n // 3)."""
    n = profile.numel()
    if n < 2:
        raise ValueError(
            f"early_late_contrast: needs at least 2 profile entries (a model of >= 4 blocks), got {n}"
        )
    k = max(1, n // 3)
    return float(profile[:k].double().mean() - profile[-k:].double().mean())


def collapse_run(similarity: torch.Tensor, threshold: float = 0.9) -> tuple[int, int]:
    """(first layer, length) of the longest run of consecutive layers whose pairwise similarities
    are all >= `threshold` (earliest on ties; a single layer is a run of length 1)."""
    num = similarity.shape[0]
    best = (0, 1)
    for first in range(num):
        last = first
        while last + 1 < num and bool(
            (similarity[first : last + 2, first : last + 2] >= threshold).all()
        ):
            last += 1
        if last - first + 1 > best[1]:
            best = (first, last - first + 1)
    return best


@dataclass
class LayerCollapse:
    """Redundancy and collapse numbers of one model (module docstring)."""

    redundancy: torch.Tensor  # [L-2] rho_l (per-token)
    contrast: float  # early-vs-late contrast of rho
    run_start: int  # collapse run: first layer
    run_length: int  # and its number of layers
    pooled_drop: float | None  # mean off-diagonal pooled S minus the same with c* zeroed
    run_pooled_drop: float | None  # the same over the pairs inside the collapse run
    threshold: float = 0.9

    def as_dict(self) -> dict:
        return {
            "redundancy": self.redundancy.tolist(),
            "contrast": self.contrast,
            "collapse_run": {"start": self.run_start, "layers": self.run_length},
            "pooled_drop": self.pooled_drop,
            "run_pooled_drop": self.run_pooled_drop,
            "threshold": self.threshold,
        }


def _mean_off_diagonal(matrix: torch.Tensor) -> float:
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    off = ~torch.eye(n, dtype=torch.bool)
    return float(matrix[off].double().mean())


def layer_collapse(similarities: LayerSimilarities, *, threshold: float = 0.9) -> LayerCollapse:
    """Redundancy profile, early-vs-late contrast and collapse run of the per-token similarity,
    and the pooled-similarity drop when the zeroed channels (c*) are removed (None without)."""
    per_token = similarities.matrices["per_token"]
    rho = redundancy_profile(per_token)
    start, length = collapse_run(per_token, threshold)
    drop = run_drop = None
    if similarities.zeroed is not None:
        diff = similarities.matrices["pooled"] - similarities.zeroed["pooled"]
        drop = _mean_off_diagonal(diff)
        run_drop = _mean_off_diagonal(diff[start : start + length, start : start + length])
    return LayerCollapse(rho, early_late_contrast(rho), start, length, drop, run_drop, threshold)
