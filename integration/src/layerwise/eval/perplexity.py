"""Perplexity of a causal LM over packed blocks.

    loss = -(1/N) * sum_{b, t} log p(x_{b, t+1} | x_{b, <=t})      over all N predicted tokens
    perplexity = exp(loss)

Each block of T + 1 tokens (see `layerwise.data.packing`) contributes T predictions; its context
starts at the block boundary (no carry-over between blocks). Under torch.distributed every process
scores a disjoint share of the batches and the sums are all-reduced, so every process returns the
same numbers.

Source-domain perplexity (the forgetting measure shared by the LIFT reproduction,
`examples/sparse_ft_smollm2.py`, and the small-reasoning-LMs study): `source_blocks` cuts held-out
Shakespeare (Hamlet, Macbeth, Othello; characters 5000..60000 of each, in that order) into rows of
`block` tokens, and `source_perplexity` is `perplexity` over those rows (each row predicts its last
`block - 1` tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from layerwise._progress import progress_bar
from layerwise.data.packing import PackedBlocks
from layerwise.data.shakespeare import shakespeare_texts
from layerwise_core import all_reduce_sum, rank_batch_starts

__all__ = [
    "SOURCE_HELD_OUT",
    "PerplexityResult",
    "next_token_loss",
    "perplexity",
    "source_blocks",
    "source_perplexity",
]

SOURCE_HELD_OUT = ("hamlet_gut", "macbeth_gut", "othello_gut")  # works no run trains on


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


def _gather(blocks: PackedBlocks | torch.Tensor, indices: range) -> torch.Tensor:
    if isinstance(blocks, torch.Tensor):
        return blocks[indices.start : indices.stop].long()
    return blocks.gather(indices)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    blocks: PackedBlocks | torch.Tensor,
    batch_size: int = 8,
    max_blocks: int | None = None,
    device: torch.device | str | None = None,
    *,
    progress: bool = False,
) -> PerplexityResult:
    """Score the first `max_blocks` blocks (all if None), `batch_size` blocks per forward pass.

    `blocks`: packed blocks, or a (count, T + 1) tensor whose rows are blocks.
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
        batch = _gather(blocks, range(start, min(start + batch_size, count))).to(device)
        total[0] += next_token_loss(model, batch, reduction="sum").double()
        total[1] += batch[:, 1:].numel()
    for _ in range(idle):  # FSDP2: as many (collective) forward passes as the busiest process
        model(input_ids=_gather(blocks, range(1)).to(device)[:, :-1], use_cache=False)
    model.train(was_training)
    total = all_reduce_sum(total)
    loss = (total[0] / total[1]).item()
    return PerplexityResult(loss=loss, perplexity=math.exp(loss), tokens=int(total[1].item()))


def source_blocks(
    tokenizer, block: int, count: int, works: Sequence[str] = SOURCE_HELD_OUT
) -> torch.Tensor:
    """A (count, block) tensor of source-domain tokens: characters 5000..60000 of each Shakespeare
    text in `works` (file stems of `layerwise.data.shakespeare_texts`), tokenized without special
    tokens and concatenated until `count * block` tokens are there."""
    texts = {t.name: t.text for t in shakespeare_texts()}
    missing = [w for w in works if w not in texts]
    if missing:
        raise ValueError(f"no Shakespeare text named {missing}: pick works from {sorted(texts)}")
    ids: list[int] = []
    for name in works:
        ids += tokenizer(texts[name][5000:60000], add_special_tokens=False)["input_ids"]
        if len(ids) >= count * block:
            break
    if len(ids) < count * block:
        raise ValueError(
            f"{works} give {len(ids)} tokens, fewer than {count} blocks of {block}: lower the count"
        )
    return torch.tensor(ids[: count * block]).view(count, block)


def source_perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 4) -> float:
    """Perplexity on source-domain rows (from `source_blocks`): exp of the mean next-token NLL
    over every row's last `block - 1` tokens; the model's train/eval mode is restored."""
    return perplexity(model, blocks, batch_size=batch_size).perplexity
