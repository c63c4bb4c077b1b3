"""Unsupervised classifier-free guidance for masked diffusion LMs (LLaDA, Nie et al. 2025, App. B.3).

The unconditional input masks every prompt position (the prompt, and any forced constraint token);
both sequences go through the network in one batch, and with guidance scale w

    logits = un + (w + 1) * (cond - un)

(Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022; LLaDA's `cfg_scale`). One guided step
is two forward evaluations.
"""

from __future__ import annotations

import torch

from layerwise_core import renamed_kwargs

__all__ = ["guided_logits", "unconditional_input"]


@renamed_kwargs(mask_id="mask_token_id")
def unconditional_input(
    x: torch.Tensor, prompt_index: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """x with every prompt position replaced by [MASK] (`mask_token_id`)."""
    return x.masked_fill(prompt_index, mask_token_id)


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """un + (w + 1)(cond - un): w = 0 returns the conditional logits."""
    return uncond + (cfg_scale + 1) * (cond - uncond)
