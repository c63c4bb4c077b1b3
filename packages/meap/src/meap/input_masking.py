"""MEAP pre-training: mask a fraction of the *input* positions, keep the next-token targets clean.

Zhuang et al., "Mask-Enhanced Autoregressive Prediction: Pay Less Attention to Learn More",
arXiv 2502.07490 (ICML 2025), Sec. 3.1. For a block of inputs x_0 .. x_{T-1} with targets
x_1 .. x_T and a set M of masked input positions, |M| = max(1, floor(T * r)):

    x~_t = [MASK]  if t in M,  else x_t
    L    = -(1/T) * sum_{t=0}^{T-1} log p(x_{t+1} | x~_0, ..., x~_t)

Ordinary causal next-token cross-entropy over every position, on corrupted inputs: a masked slot t
still has its clean token x_t as the target of position t-1, so the model must predict it from the
context before it, and every later prediction must work around the hole. Attention stays causal;
evaluation is unmasked.

Two ways to draw M:

- `mode="reference"`: the official code (scitix/MEAP, `MEAP-Pretain/pretrained/meap_*.py`,
  `train()`) bit for bit:

      random.seed(50 + step % 51)
      M = random.sample(range(0, T - 1), max(1, int(T * r)))
      input_ids[:, M] = MASK_ID

  The same columns for every row, every micro-batch of an optimizer step and every rank; 51 masks
  cycle; the last input position T-1 is never masked. Here the draw uses a private
  `random.Random`, so Python's global RNG is left alone (the official code reseeds it).
- `mode="per_sequence"`: each row draws its own max(1, floor(T_row * r)) positions among its
  non-padding inputs except its last one, from a torch generator seeded by `(seed, step)` only.

Both are functions of the step (and seed), never of hidden RNG state: the same on every rank and
after a resume.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

import torch

from layerwise_core import TokenInputs, renamed_kwargs, token_inputs

__all__ = ["MaskMode", "mask_inputs", "masked_positions", "reference_mask_positions"]

MaskMode = Literal["reference", "per_sequence"]
_MODES = ("reference", "per_sequence")
_REFERENCE_SEED_BASE = 50  # random.seed(50 + step % 51) in the official train()
_REFERENCE_CYCLE = 51


def _check_ratio(mask_ratio: float) -> None:
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(
            f"mask_ratio must be in (0, 1), got {mask_ratio}; the paper sweeps 0.05-0.2"
        )


@renamed_kwargs(ratio="mask_ratio")
def reference_mask_positions(block_size: int, mask_ratio: float, step: int) -> list[int]:
    """The official mask of optimizer step `step` for blocks of `block_size` inputs.

    `random.seed(50 + step % 51); random.sample(range(0, block_size - 1), max(1, int(block_size *
    mask_ratio)))` (MEAP pre-training, arXiv 2502.07490 Sec. 3.1), in the order `random.sample`
    returns.
    """
    _check_ratio(mask_ratio)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    count = max(1, int(block_size * mask_ratio))
    if block_size < 2 or count > block_size - 1:
        raise ValueError(
            f"cannot mask {count} of the first {block_size - 1} positions of a {block_size}-token "
            "block: use longer blocks or a smaller mask_ratio"
        )
    rng = random.Random(_REFERENCE_SEED_BASE + step % _REFERENCE_CYCLE)
    return rng.sample(range(0, block_size - 1), count)


def _step_generator(seed: int, step: int) -> torch.Generator:
    # a 63-bit seed from (seed, step) alone: the same stream on every rank and after a resume
    digest = hashlib.sha256(f"meap-per-sequence\x00{seed}\x00{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _last_valid(valid: torch.Tensor) -> torch.Tensor:
    """One-hot (B, T) of each row's last True position (all False for an empty row)."""
    positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    last = torch.where(valid, positions, -1).amax(dim=1, keepdim=True)
    return valid & (positions == last)


@renamed_kwargs(ratio="mask_ratio")
def masked_positions(
    input_ids: TokenInputs,
    mask_ratio: float,
    step: int,
    mode: MaskMode = "reference",
    generator: torch.Generator | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Boolean (B, T) tensor: True where MEAP replaces the input by [MASK] (see module docstring).

    `input_ids` is a (B, T) tensor or a batch mapping with "input_ids" (and "attention_mask").
    `attention_mask` marks real tokens (1) and padding (0); padding is never masked, nor the last
    real token of a row (the official rule for full rows: the last column is never drawn). In
    `per_sequence` mode each row's count is max(1, floor(T_row * mask_ratio)) with T_row its number
    of real tokens, drawn among them except the last; `generator` overrides the `(seed, step)` one.
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="masked_positions")
    if mode not in _MODES:
        raise ValueError(f"unknown MEAP mask mode {mode!r}; use 'reference' or 'per_sequence'")
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}; "
            "use input_ids.unsqueeze(0) for a single sequence"
        )
    _check_ratio(mask_ratio)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    batch, length = input_ids.shape
    device = input_ids.device
    valid = (
        torch.ones(batch, length, dtype=torch.bool, device=device)
        if attention_mask is None
        else attention_mask.to(device=device).bool()
    )
    if valid.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(valid.shape)} differs from input_ids "
            f"{tuple(input_ids.shape)}"
        )
    if mode == "reference":
        if generator is not None:
            raise ValueError(
                "mode='reference' draws from random.seed(50 + step % 51) like the official code; "
                "a generator applies only to mode='per_sequence'"
            )
        mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        mask[:, reference_mask_positions(length, mask_ratio, step)] = True
        # a full row's last position is never drawn; a padded row's last real one is excluded too
        return mask & valid & ~_last_valid(valid)

    eligible = valid & ~_last_valid(valid)
    count = torch.floor(valid.sum(dim=1).double() * mask_ratio).long().clamp(min=1)
    count = torch.minimum(count, eligible.sum(dim=1))  # 0 for rows with < 2 real tokens
    if generator is None:
        generator = _step_generator(seed, step)
    keys = torch.rand(batch, length, generator=generator, device=generator.device).to(device)
    keys = keys.masked_fill(~eligible, 2.0)  # ineligible positions sort last
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(length, device=device).expand_as(order)
    )
    return rank < count[:, None]


@renamed_kwargs(ratio="mask_ratio")
def mask_inputs(
    input_ids: TokenInputs,
    mask_ratio: float,
    mask_token_id: int,
    step: int,
    mode: MaskMode = "reference",
    generator: torch.Generator | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """A copy of `input_ids` (B, T) with MEAP's masked input positions set to `mask_token_id`.

    x~_t = [MASK] for t in M, else x_t (arXiv 2502.07490 Sec. 3.1); targets are not touched: score
    the model on x~ against the clean next tokens. `step` is the optimizer step (the same for all
    gradient-accumulation micro-batches, as in the official loop). `input_ids` may be a batch
    mapping with "input_ids" (and "attention_mask"); the masked ids come back as a tensor. See
    `masked_positions`.
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="mask_inputs")
    _check_ids(input_ids, mask_token_id)
    mask = masked_positions(
        input_ids, mask_ratio, step, mode, generator, attention_mask=attention_mask, seed=seed
    )
    return input_ids.masked_fill(mask, mask_token_id)


def _check_ids(input_ids: torch.Tensor, mask_token_id: int) -> None:
    """Integer token ids and a valid [MASK] id, or a ValueError naming the fix."""
    if (
        input_ids.dtype.is_floating_point
        or input_ids.dtype.is_complex
        or input_ids.dtype == torch.bool
    ):
        raise ValueError(
            f"mask_inputs: input_ids must hold integer token ids, got dtype {input_ids.dtype}; "
            "pass the tokenizer's ids (torch.long), e.g. input_ids.long() if they are whole numbers"
        )
    if not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(
            f"mask_token_id must be a token id >= 0, got {mask_token_id!r}; "
            "meap.add_mask_token(tokenizer, model) adds [MASK] and returns its id"
        )
