"""Perplexity of a causal LM over packed blocks.

    loss = -(1/N) * sum_{b, t} log p(x_{b, t+1} | x_{b, <=t})      over all N predicted tokens
    perplexity = exp(loss)

Each block of T + 1 tokens (see `layerwise.data.packing`) contributes T predictions; its context
starts at the block boundary (no carry-over between blocks). Under torch.distributed every process
scores a disjoint share of the batches and the sums are all-reduced, so every process returns the
same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from layerwise._progress import progress_bar
from layerwise.data.packing import PackedBlocks
from layerwise_core import all_reduce_sum, rank_batch_starts

__all__ = ["PerplexityResult", "next_token_loss", "perplexity"]


@dataclass(frozen=True)
class PerplexityResult:
    loss: float  # mean next-token negative log-likelihood, nats
    perplexity: float  # exp(loss)
    tokens: int  # predicted tokens N


def next_token_loss(
    model: nn.Module, blocks: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of predicting `blocks[:, 1:]` from `blocks[:, :-1]` (logits upcast to fp32)."""
    logits = model(input_ids=blocks[:, :-1], use_cache=False).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1), reduction=reduction
    )


@torch.no_grad()
def perplexity(
    model: nn.Module,
    blocks: PackedBlocks,
    batch_size: int = 8,
    max_blocks: int | None = None,
    device: torch.device | str | None = None,
    *,
    progress: bool = False,
) -> PerplexityResult:
    """Score the first `max_blocks` blocks (all if None), `batch_size` blocks per forward pass.

    `progress`: a bar over the batches on stderr (on a terminal, main process only)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    count = len(blocks) if max_blocks is None else min(len(blocks), max_blocks)
    if count == 0:
        raise ValueError("no validation blocks: the validation split is shorter than one block")
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of NLL, tokens]
    starts, idle = rank_batch_starts(count, batch_size)
    for start in progress_bar(starts, desc="validation perplexity", quiet=not progress):
        batch = blocks.gather(range(start, min(start + batch_size, count))).to(device)
        total[0] += next_token_loss(model, batch, reduction="sum").double()
        total[1] += batch[:, 1:].numel()
    for _ in range(idle):  # FSDP2: as many (collective) forward passes as the busiest process
        model(input_ids=blocks.gather(range(1)).to(device)[:, :-1], use_cache=False)
    model.train(was_training)
    total = all_reduce_sum(total)
    loss = (total[0] / total[1]).item()
    return PerplexityResult(loss=loss, perplexity=math.exp(loss), tokens=int(total[1].item()))
