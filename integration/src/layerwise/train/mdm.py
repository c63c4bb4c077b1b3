"""Masked-diffusion training objective (`objective: mdm`): the loss of LLaDA-style language models.

Nie et al., "Large Language Diffusion Models", arXiv:2502.09992, Eq. (3) and the pre-training / SFT
code of ML-GSAI/LLaDA `GUIDELINES.md`. For clean tokens x_0 (B, L):

    t ~ U(0, 1),  p = (1 - eps) t + eps               one noise level per sequence, p in [eps, 1]
    x_t[l] = [MASK] with probability p, else x_0[l]   independently per token
    loss = - 1/(B L) * sum_{b, l masked} log p_theta(x_0[b, l] | x_t[b]) / p_b

an upper bound on the negative log-likelihood (the 1/p weight makes it the ELBO). The SFT variant
never masks the prompt and averages each answer over its own length:

    loss = - 1/B * sum_b 1/|answer_b| * sum_{l masked} log p_theta(x_0[b, l] | x_t[b]) / p_b

Dream-style models (`logit_shift = 1`) score token l with the output at l - 1; position 0 then has
no output, so it is never masked.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from layerwise.eval.perplexity import PerplexityResult
from layerwise_core import all_reduce_sum, rank_batch_starts

__all__ = ["forward_process", "masked_diffusion_loss", "mdm_loss", "mdm_validation", "step_noise"]


def forward_process(
    input_ids: torch.Tensor,
    mask_token_id: int,
    eps: float = 1e-3,
    maskable: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, masked (B, L) bool, p (B, L)): mask each token with probability p = (1-eps) t + eps.

    `maskable` (B, L) bool restricts which positions may be masked (the answer in SFT). The
    uniform draws t (B,) and u (B, L) (masked = u < p) come from `generator` (the global RNG when
    None), or are given as `noise` (`step_noise`).
    """
    batch, length = input_ids.shape
    device = input_ids.device
    if noise is None:
        t = torch.rand(batch, device=device, generator=generator)
        u = torch.rand(batch, length, device=device, generator=generator)
    else:
        t, u = (x.to(device) for x in noise)
    p_mask = ((1 - eps) * t + eps)[:, None].expand(batch, length)
    masked = u < p_mask
    if maskable is not None:
        masked &= maskable
    return input_ids.masked_fill(masked, mask_token_id), masked, p_mask


def masked_diffusion_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask_token_id: int,
    *,
    eps: float = 1e-3,
    logit_shift: int = 0,
    prompt_lengths: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The masked-diffusion loss of one batch of clean token blocks (scalar, differentiable).

    Args:
        model: a bidirectional LM returning `.logits` (B, L, V) for `input_ids` (e.g.
            `layerwise_core.tiny_models.BidirectionalLlamaForMaskedDiffusion`).
        input_ids: (B, L) clean tokens, never containing `mask_token_id`.
        mask_token_id: the [MASK] id (an id the tokenizer never produces).
        eps: smallest masking probability.
        logit_shift: 0 (LLaDA-style, output l scores token l) or 1 (Dream-style, output l - 1).
        prompt_lengths: (B,) for SFT: the first prompt_lengths[b] tokens are never masked and
            each answer is averaged over its length; None for pre-training.
        attention_mask: (B, L) key padding mask passed to the model, if any.
        generator: for the noise draws (global RNG when None).
        noise: the draws (t (B,), u (B, L)) themselves, e.g. `step_noise` (then no generator).
    """
    if logit_shift not in (0, 1):
        raise ValueError(
            f"logit_shift must be 0 (LLaDA-style) or 1 (Dream-style), got {logit_shift}"
        )
    if bool((input_ids == mask_token_id).any()):
        raise ValueError(
            f"the clean tokens contain the mask id {mask_token_id}: give [MASK] an id of its own "
            "(e.g. the vocabulary size, with the embedding grown by one)"
        )
    batch, length = input_ids.shape
    positions = torch.arange(length, device=input_ids.device)[None, :]
    maskable = torch.ones_like(input_ids, dtype=torch.bool)
    if prompt_lengths is not None:
        maskable &= positions >= prompt_lengths.reshape(-1, 1).to(input_ids.device)
    if logit_shift:
        maskable &= positions >= 1
    noisy, masked, p_mask = forward_process(
        input_ids, mask_token_id, eps, maskable, generator, noise
    )
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    logits = model(input_ids=noisy, **kwargs).logits
    if logit_shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    token_loss = (
        F.cross_entropy(logits[masked].float(), input_ids[masked], reduction="none")
        / p_mask[masked]
    )
    if prompt_lengths is None:
        return token_loss.sum() / (batch * length)
    answer_lengths = maskable.sum(1, keepdim=True).expand(batch, length)[masked].clamp(min=1)
    return (token_loss / answer_lengths).sum() / batch


def _mask_and_shift(model: nn.Module) -> tuple[int, int]:
    config = getattr(model, "module", model).config  # DDP wraps the model
    mask_token_id = getattr(config, "mask_token_id", None)
    if mask_token_id is None:
        raise ValueError(
            "objective 'mdm' needs a model whose config has mask_token_id: build it with "
            "layerwise_core.tiny_models.BidirectionalLlamaConfig(mask_token_id=..., ...)"
        )
    return int(mask_token_id), int(getattr(config, "logit_shift", 0))


def step_noise(
    seed: int, step: int, global_batch: int, length: int, rows: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise draws (t (B,), u (B, L)) of rows `rows` of the global batch of optimizer step
    `step`: drawn for the whole global batch from a generator of (seed, step) alone, so that a
    row's masks do not depend on the number of processes, the micro-batching or a resume."""
    digest = hashlib.sha256(f"mdm-noise\x00{seed}\x00{step}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    t = torch.rand(global_batch, generator=generator)
    u = torch.rand(global_batch, length, generator=generator)
    return t[rows], u[rows]


def mdm_loss(
    model: nn.Module, blocks: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """`masked_diffusion_loss` of packed pre-training blocks, reading the mask id and the shift
    from the model's config (`config.mask_token_id`, `config.logit_shift`): the drop-in for
    `next_token_loss(model, blocks)` in the pre-training loop (which passes `step_noise`)."""
    mask_token_id, shift = _mask_and_shift(model)
    return masked_diffusion_loss(model, blocks, mask_token_id, logit_shift=shift, noise=noise)


@torch.no_grad()
def mdm_validation(
    model: nn.Module,
    blocks,
    batch_size: int = 8,
    max_blocks: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
):
    """The masked-diffusion loss over validation blocks, with noise drawn from `seed` so that
    evaluations at different steps see the same masks: an upper bound on the NLL per token
    (`perplexity` of the result = exp(bound)). Same signature and result type as
    `layerwise.eval.perplexity`, so the pre-training loop can call either."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    count = len(blocks) if max_blocks is None else min(len(blocks), max_blocks)
    if count == 0:
        raise ValueError("no validation blocks: the validation split is shorter than one block")
    mask_token_id, shift = _mask_and_shift(model)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of loss * tokens, tokens]
    starts, idle = rank_batch_starts(count, batch_size)
    for start in starts:
        batch = blocks.gather(range(start, min(start + batch_size, count))).to(device)
        generator = torch.Generator(device=device).manual_seed(seed + start)
        loss = masked_diffusion_loss(
            model, batch, mask_token_id, logit_shift=shift, generator=generator
        )
        total[0] += loss.double() * batch.numel()
        total[1] += batch.numel()
    for _ in range(idle):  # FSDP2: as many (collective) forward passes as the busiest process
        model(input_ids=blocks.gather(range(1)).to(device))
    model.train(was_training)
    total = all_reduce_sum(total)
    loss = (total[0] / total[1]).item()
    return PerplexityResult(loss=loss, perplexity=math.exp(loss), tokens=int(total[1].item()))
