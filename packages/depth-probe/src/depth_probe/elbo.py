"""Likelihoods of masked-diffusion LMs for the DLM-vs-AR study (arXiv 2605.06366, spec B.2 / B.7;
the Monte-Carlo ELBO of LLaDA's lm-eval harness, `eval_llada.py` of the study's code).

Monte-Carlo ELBO log-likelihood of a target y given a prefix x (mc_num samples in groups of M)::

    t_k = (u + k / M) mod 1,  k = 0..M-1, u ~ U[0, 1)   stratified t within each group
    p_k = (1 - eps) t_k + eps
    y_t: each target token masked w.p. p_k; the prefix, the padding, position 0 and the LAST
         target token are never masked
    ll  = - mean over the mc_num samples of  sum_{masked i} CE(logits_i, y_i) / p_k

Fixed-mask ELBO loss at a given t (spec B.7, the loss of compressed DLMs): one seeded mask per
token, masked iff u_i < t with u ~ U[0, 1] (the same masks for every model compared)::

    loss(t) = 1/N * sum_{masked i} CE(logits_i, x_i) / t      (N real tokens)

Dream-style models (`config.logit_shift = 1`) score token i with the output at i - 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.capture import logit_shift_of, token_mask
from depth_probe.scoring import is_masked_diffusion
from layerwise_core import TokenInputs, masked_copies, token_inputs

__all__ = ["diffusion_probe_inputs", "elbo_loglikelihood", "fixed_mask_elbo"]


def _mask_id(model: nn.Module, mask_token_id: int | None, what: str) -> int:
    if mask_token_id is not None:
        return int(mask_token_id)
    found = getattr(getattr(model, "config", None), "mask_token_id", None)
    if found is None:
        raise ValueError(
            f"{what}: the model's config has no mask_token_id; pass mask_token_id=... (the [MASK] id)"
        )
    return int(found)


def _aligned_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None):
    kwargs = {} if mask is None else {"attention_mask": mask}
    logits = model(input_ids=ids, **kwargs).logits
    if logit_shift_of(model) == 1:  # Dream: the output at i - 1 scores token i
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits


def diffusion_probe_inputs(
    model: nn.Module,
    input_ids: TokenInputs,
    attention_mask: torch.Tensor | None = None,
    *,
    copies: int = 4,
    seed: int = 0,
    mask_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids, attention_mask) to probe `model` with: a masked-diffusion LM gets `copies` independently
    masked copies of each window (t ~ U[0, 1] per copy, each real token masked w.p. t;
    `layerwise_core.masked_copies`), an AR LM the windows unchanged."""
    input_ids, attention_mask = token_inputs(
        input_ids, attention_mask, what="diffusion_probe_inputs"
    )
    if input_ids is None:
        raise ValueError("diffusion_probe_inputs: input_ids is required")
    if not is_masked_diffusion(model):
        return input_ids, attention_mask
    mask_id = _mask_id(model, mask_token_id, "diffusion_probe_inputs")
    real = token_mask(input_ids, attention_mask)
    ids = masked_copies(input_ids, mask_id, copies, seed=seed, maskable=real)
    mask = None if attention_mask is None else attention_mask.repeat_interleave(copies, dim=0)
    return ids, mask


def _as_ids(value) -> torch.Tensor:
    ids = torch.as_tensor(value, dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"elbo_loglikelihood: each prefix / target must be 1-D, got {ids.shape}")
    return ids


@torch.no_grad()
def elbo_loglikelihood(
    model: nn.Module,
    prefixes: Sequence[Sequence[int] | torch.Tensor],
    targets: Sequence[Sequence[int] | torch.Tensor],
    *,
    mc_num: int = 128,
    group_size: int = 32,
    eps: float = 1e-3,
    requests_per_batch: int = 1,
    seed: int = 0,
    mask_token_id: int | None = None,
) -> torch.Tensor:
    """[R] float64 Monte-Carlo ELBO estimates of log p(target_r | prefix_r) (module docstring).

    Args:
        mc_num: samples per request, a multiple of `group_size` (M: the stratification group, one
            forward batch of M rows per request).
        eps: smallest masking probability.
        requests_per_batch: requests run together (rows padded on the right, padding masked out).
        seed: the noise draws come from a CPU generator seeded with it.
    """
    if not is_masked_diffusion(model):
        raise ValueError(
            "elbo_loglikelihood: needs a masked-diffusion LM (config.logit_shift / mask_token_id); "
            "score an AR model by its next-token log-likelihood instead"
        )
    if len(prefixes) != len(targets):
        raise ValueError(f"elbo_loglikelihood: {len(prefixes)} prefixes but {len(targets)} targets")
    if mc_num < 1 or group_size < 1 or mc_num % group_size:
        raise ValueError(
            f"elbo_loglikelihood: mc_num ({mc_num}) must be a positive multiple of group_size "
            f"({group_size})"
        )
    mask_id = _mask_id(model, mask_token_id, "elbo_loglikelihood")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(prefixes), dtype=torch.float64)
    for first in range(0, len(prefixes), requests_per_batch):
        chunk = range(first, min(first + requests_per_batch, len(prefixes)))
        pre = [_as_ids(prefixes[r]) for r in chunk]
        tar = [_as_ids(targets[r]) for r in chunk]
        out[first : first + len(pre)] = _elbo_chunk(
            model, pre, tar, mc_num, group_size, eps, mask_id, generator, device
        )
    return out


def _elbo_chunk(model, pre, tar, mc_num, group, eps, mask_id, generator, device) -> torch.Tensor:
    requests = len(pre)
    full = [len(p) + len(t) for p, t in zip(pre, tar)]
    length = max(full)
    seq = torch.zeros(requests, length, dtype=torch.long)
    for r, (p, t) in enumerate(zip(pre, tar)):
        seq[r, : full[r]] = torch.cat([p, t])
    col = torch.arange(length)[None, :]
    prefix_len = torch.tensor([len(p) for p in pre])[:, None]
    full_len = torch.tensor(full)[:, None]
    valid = col < full_len
    target = (col >= prefix_len) & valid & (col != full_len - 1)  # last target never masked
    target[:, 0] = False  # position 0 is never masked (no output scores it under a logit shift)
    rows = requests * group
    seq_rows = seq.repeat_interleave(group, dim=0)
    target_rows = target.repeat_interleave(group, dim=0)
    attn = valid.repeat_interleave(group, dim=0).long().to(device) if not valid.all() else None
    strata = torch.arange(group, dtype=torch.float64) / group
    total = torch.zeros(requests, dtype=torch.float64)
    iters = mc_num // group
    for _ in range(iters):
        u0 = torch.rand(requests, generator=generator, dtype=torch.float64)
        t = ((u0[:, None] + strata[None, :]) % 1).reshape(rows)
        p = (1 - eps) * t + eps
        masked = torch.rand(rows, length, generator=generator, dtype=torch.float64) < p[:, None]
        masked &= target_rows
        noisy = seq_rows.masked_fill(masked, mask_id).to(device)
        logits = _aligned_logits(model, noisy, attn)
        hit = masked.to(device)
        ce = F.cross_entropy(logits[hit].double(), seq_rows.to(device)[hit], reduction="none")
        weighted = (ce.cpu() / p[:, None].expand(rows, length)[masked]).to(torch.float64)
        per_row = torch.zeros(rows, dtype=torch.float64).index_add_(
            0, masked.nonzero()[:, 0], weighted
        )
        total += per_row.view(requests, group).sum(1) / group
    return -(total / iters)


@torch.no_grad()
def fixed_mask_elbo(
    model: nn.Module,
    input_ids: TokenInputs,
    t: float,
    attention_mask: torch.Tensor | None = None,
    *,
    seed: int = 0,
    batch_size: int = 8,
    mask_token_id: int | None = None,
) -> float:
    """loss(t) = 1/N * sum_{masked i} CE_i / t over the N real tokens of `input_ids`, token i masked
    iff u_i < t with u ~ U[0, 1]^(windows x tokens) drawn once from `seed` (module docstring): the
    same masks for every model, so relative changes compare. Under a logit shift position 0 is
    never masked."""
    if not 0.0 < t <= 1.0:
        raise ValueError(f"fixed_mask_elbo: t must be in (0, 1], got {t}")
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="fixed_mask_elbo")
    if input_ids is None:
        raise ValueError("fixed_mask_elbo: input_ids is required")
    if not is_masked_diffusion(model):
        raise ValueError("fixed_mask_elbo: needs a masked-diffusion LM; use next-token CE for AR")
    mask_id = _mask_id(model, mask_token_id, "fixed_mask_elbo")
    device = next(model.parameters()).device
    real = token_mask(input_ids, attention_mask).cpu()
    u = torch.rand(input_ids.shape, generator=torch.Generator().manual_seed(seed))
    masked = (u < t) & real
    if logit_shift_of(model) == 1:
        masked[:, 0] = False
    total = 0.0
    for start in range(0, input_ids.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        ids, hit = input_ids[rows].to(device), masked[rows].to(device)
        mask = None if attention_mask is None else attention_mask[rows].to(device)
        logits = _aligned_logits(model, ids.masked_fill(hit, mask_id), mask)
        total += float(F.cross_entropy(logits[hit].double(), ids[hit], reduction="sum"))
    return total / t / max(int(real.sum()), 1)
