"""The papers' initialisation: every Linear/Embedding weight N(0, 0.02), no depth-scaled output init.

The Curse-of-Depth README notes that combining LNS with scaled initialisation diminishes its effect,
so LNS is trained from this plain init.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerwise_core import init_normal_

__all__ = ["REFERENCE_EMBEDDING_STD", "init_weights"]

# Official LayerNorm-Scaling code before commit eb1a0a5: std sqrt(2 / 5) for the embedding (a missing
# division by the width); the published LNS and Mix-LN numbers were probably trained with it.
REFERENCE_EMBEDDING_STD = math.sqrt(2.0 / 5.0)


@torch.no_grad()
def init_weights(
    model: nn.Module, std: float = 0.02, *, reference_quirks: bool = False
) -> nn.Module:
    """N(0, std) for Linear and Embedding weights, zero biases, norms to ones; in place.

    `reference_quirks=True` initialises the input embedding with std sqrt(2/5) = 0.632 as the
    official code did until commit eb1a0a5.
    """
    init_normal_(model, std)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if "Norm" in type(module).__name__ and isinstance(weight, torch.Tensor):
            offset_style = type(module).__name__.startswith("Gemma")
            weight.fill_(0.0 if offset_style else 1.0)
    if reference_quirks:
        embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if embed is None:
            raise ValueError(
                "init_weights(reference_quirks=True) needs model.get_input_embeddings()"
            )
        embed.weight.normal_(0.0, REFERENCE_EMBEDDING_STD)
    return model
