"""Logit lens (nostalgebraist 2020): decode every intermediate residual stream with the model's own
final norm and unembedding::

    p_l = softmax(W_U Norm_f(h_l)),   l = 0 (embeddings) .. L (last block output)

and compare with the model's output distribution p_L: KL(p_L || p_l), agreement of the top-1 token,
and the rank of the target token (the next token for causal LMs; the token itself for LLaDA-like
masked-diffusion LMs, `config.logit_shift = 0`). A layer after which p_l stops changing is a layer
whose successors only refine, the signature of unused depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.capture import DepthCapture, as_capture
from layerwise_core import TokenInputs

__all__ = ["LogitLens", "logit_lens"]


@dataclass
class LogitLens:
    """Per hidden state h_0 .. h_L (L + 1 entries), means over real tokens."""

    kl: torch.Tensor  # KL(p_L || p_l) in nats
    top1_agreement: torch.Tensor  # fraction of tokens with argmax p_l == argmax p_L
    target_rank: torch.Tensor  # median rank of the target token under p_l (1 = top)
    target_accuracy: torch.Tensor  # fraction of tokens whose target is the argmax of p_l

    def as_dict(self) -> dict[str, list[float]]:
        return {
            "kl": self.kl.tolist(),
            "top1_agreement": self.top1_agreement.tolist(),
            "target_rank": self.target_rank.tolist(),
            "target_accuracy": self.target_accuracy.tolist(),
        }


def _targets(capture: DepthCapture) -> tuple[torch.Tensor, torch.Tensor]:
    """(target ids [batch, seq], valid [batch, seq]) for the output at each position."""
    ids, mask, shift = capture.input_ids, capture.mask, capture.logit_shift
    targets = torch.zeros_like(ids)
    valid = torch.zeros_like(mask)
    length = ids.shape[1]
    if shift >= length:
        return targets, valid
    targets[:, : length - shift] = ids[:, shift:]
    valid[:, : length - shift] = mask[:, : length - shift] & mask[:, shift:]
    return targets, valid


def logit_lens(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    chunk_size: int = 256,
    max_tokens: int | None = None,
) -> LogitLens:
    """Decode h_0 .. h_L through the final norm and the LM head; compare with the model's output.

    The reference distribution p_L is the model's own logits (so KL_L = 0 and agreement_L = 1
    unless the head does something the lens does not, e.g. logit soft-capping). Tokens are decoded
    `chunk_size` at a time, so a large vocabulary never needs [L, tokens, vocab] in memory.
    `max_tokens` decodes only that many real tokens, evenly spaced (the lens costs L + 1 LM-head
    passes per token: with a 50k vocabulary that is several forwards of a small model).
    """
    capture = as_capture(source, input_ids, attention_mask, what="logit_lens")
    dmap = capture.decoder_map
    if dmap is None or dmap.lm_head is None or capture.input_ids is None:
        raise ValueError(
            "logit_lens: needs the model's final norm and head and the input ids: pass the model "
            "(logit_lens(model, ids)) or a capture from depth_probe.capture_depth(model, ids)"
        )
    if capture.stream.logits is None:
        raise ValueError("logit_lens: the capture has no logits; capture with logits=True")
    norm = dmap.final_norm if dmap.final_norm is not None else nn.Identity()
    head = dmap.lm_head
    targets, valid = _targets(capture)
    final_logits = capture.real_tokens(capture.stream.logits)
    keep = torch.arange(final_logits.shape[0], device=final_logits.device)
    if max_tokens is not None and keep.numel() > max_tokens:
        keep = torch.linspace(0, keep.numel() - 1, max_tokens, device=keep.device).round().long()
    final_logits = final_logits[keep]
    flat_targets = capture.real_tokens(targets)[keep]
    flat_valid = capture.real_tokens(valid)[keep]
    hidden = [capture.real_tokens(h)[keep] for h in capture.hidden_states]
    count = keep.numel()

    states = len(hidden)
    kl = torch.zeros(states, dtype=torch.float64)
    agree = torch.zeros(states, dtype=torch.float64)
    ranks: list[list[torch.Tensor]] = [[] for _ in range(states)]
    with torch.no_grad():
        for start in range(0, count, chunk_size):
            stop = start + chunk_size
            log_q = F.log_softmax(final_logits[start:stop].float(), dim=-1)
            top_q = log_q.argmax(-1)
            target = flat_targets[start:stop, None]
            chunk_valid = flat_valid[start:stop]
            for layer, tokens in enumerate(hidden):
                log_p = F.log_softmax(head(norm(tokens[start:stop])).float(), dim=-1)
                kl[layer] += F.kl_div(log_p, log_q, log_target=True, reduction="sum").item()
                agree[layer] += (log_p.argmax(-1) == top_q).sum().item()
                rank = 1 + (log_p > log_p.gather(-1, target)).sum(-1)
                ranks[layer].append(rank[chunk_valid])
    rank_median, accuracy = [], []
    for layer_ranks in ranks:
        values = torch.cat(layer_ranks).float()
        rank_median.append(values.median().item() if values.numel() else float("nan"))
        accuracy.append((values == 1).float().mean().item() if values.numel() else 0.0)
    return LogitLens(
        kl=(kl / count).float(),
        top1_agreement=(agree / count).float(),
        target_rank=torch.tensor(rank_median),
        target_accuracy=torch.tensor(accuracy),
    )
