"""Dream's sampler (`diffusion_generate`): the `origin`, `maskgit_plus`, `topk_margin`, `entropy` algs.

Ye et al., "Dream 7B: Diffusion Large Language Models", arXiv:2508.15487; the sampler ships with
the checkpoints as `generation_utils.py` (read here in NVlabs/Fast-dLLM's vendored copy, identical
apart from an added `confidence_threshold` branch). With `steps` steps on the time grid
t_i = linspace(1, eps, steps + 1)[i], s = t_{i+1}, the logits shifted right by one (the model's
convention; the adapter does it), and the masked positions' logits z:

    p      = softmax(top_k(top_p(z / T)))            (T = 0: no division)
    x0     = sample from p if T > 0, else argmax p
    origin:       each masked position is revealed independently with probability 1 - s / t
                  (1 at the last step) and takes x0
    maskgit_plus: confidence p(x0)
    topk_margin:  confidence p_(1) - p_(2)
    entropy:      confidence sum_v p_v log p_v      (negative entropy)
        commit k = int(n_masked * (1 - s / t)) positions (all at the last step) of highest
        confidence, or, with alg_temp > 0, k positions drawn from softmax(confidence / alg_temp).

The count is floored: `int()` of an fp32 product, exactly as the released code. With
steps = gen_length = 256 the first step therefore commits 0 tokens and the last one 2.
Dream's reference averages n_masked over the batch; rows here use their own count, which is the
same number because every row starts with gen_length masks and commits the same k per step.

Semi-autoregressive blocks (`block_length`; None = one block = the whole generation, as above).
Dream's own repository (DreamLM/Dream: `generation_utils` of the checkpoints, demos, eval) has no
block option; the released block decoding is NVlabs/Fast-dLLM `dream/model/generation_utils_block.py`
(`_sample`, its fixed-schedule branch). From it, with G = gen_length:

    num_blocks = G / block_length           (G must be a multiple)
    steps_per_block = steps / num_blocks    (steps must be a multiple of num_blocks)
    t_i = linspace(1, eps, steps_per_block + 1)[i], the same grid restarted in every block
    at step i of block b: only the masked positions of block b are eligible (earlier blocks are
        decoded, later ones get confidence -inf); n = block b's masks; k = int(n * (1 - s / t)),
        all of the block's masks at its last step; `origin` reveals each mask of block b with
        probability 1 - s / t (1 at the block's last step)

so NFE = steps. Not taken from it (its cache scheme, not the schedule): its block-start pass (the
cache refresh) commits the block's first position unconditionally and replaces step 0 of the grid;
its fixed-schedule branch ranks by negative entropy whatever `alg` says. Here every step of every
block is a plain Dream step of the chosen `alg`, on the full canvas without a cache.
"""

from __future__ import annotations

import torch
import torch.distributions as dists
import torch.nn.functional as F

from dlm_decode.canvas import Canvas
from dlm_decode.remasking import select_top_k, split_steps

__all__ = ["DREAM_ALGORITHMS", "decode_dream", "dream_sample_tokens", "dream_transfer_count"]

DREAM_ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest prefix of the sorted vocabulary whose mass exceeds top_p (nucleus)."""
    ordered, index = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, index, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, logits.size(-1))
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def dream_sample_tokens(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    confidence: str = "probability",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, x0) for rows of logits (N, V), as Dream's `sample_tokens`.

    confidence: "probability" (p(x0)), "margin" (p_(1) - p_(2)) or "neg_entropy" (sum p log p).
    """
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0 and probs.shape[0] > 0:
        x0 = dists.Categorical(probs=probs).sample()
        score = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        score, x0 = probs.max(dim=-1)
    if confidence == "margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        score = top2[:, 0] - top2[:, 1]
    elif confidence == "neg_entropy":
        score = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    elif confidence != "probability":
        raise ValueError(f"confidence must be probability, margin or neg_entropy: {confidence!r}")
    return score, x0


def dream_transfer_count(
    n_masked: torch.Tensor, step: int, steps: int, timesteps: torch.Tensor
) -> torch.Tensor:
    """k = int(n * (1 - s / t)) in fp32, all remaining masks at the last step (int64, per row)."""
    if step == steps - 1:
        return n_masked.long()
    t, s = timesteps[step], timesteps[step + 1]
    return (n_masked.to(torch.float32) * (1 - s / t)).long()


_CONFIDENCE = {"maskgit_plus": "probability", "topk_margin": "margin", "entropy": "neg_entropy"}


def decode_dream(
    canvas: Canvas,
    *,
    steps: int,
    alg: str = "origin",
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg_temp: float | None = None,
    eps: float = 1e-3,
    block_length: int | None = None,
) -> None:
    """Run Dream's sampler on `canvas` (in place); randomness comes from torch's global RNG,
    drawn in the reference's order (one `rand` over all eligible masked positions for `origin`).

    block_length: semi-autoregressive blocks (see the module docstring); None: one block."""
    if alg not in DREAM_ALGORITHMS:
        raise ValueError(f"alg must be one of {DREAM_ALGORITHMS}, got {alg!r}")
    gen_length = canvas.gen_length
    if block_length is None:
        block_length = gen_length
    num_blocks, steps_per_block = split_steps(gen_length, block_length, steps, "block_length=None")
    timesteps = torch.linspace(1, eps, steps_per_block + 1, device=canvas.device)
    for block in range(num_blocks):
        start, end = canvas.block_bounds(block, block_length)
        for i in range(steps_per_block):
            if not _dream_step(
                canvas, i, steps_per_block, block * steps_per_block + i + 1, timesteps,
                start, end, alg, temperature, top_p, top_k, alg_temp,
            ):  # fmt: skip
                return


def _dream_step(
    canvas: Canvas,
    i: int,
    steps: int,
    step: int,
    timesteps: torch.Tensor,
    start: int,
    end: int,
    alg: str,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    alg_temp: float | None,
) -> bool:
    """Step i of `steps` on the grid `timesteps`, committing masks in [start, end) only; `step`
    is the global step number (for the callback). False when no row is left."""
    rows = canvas.active_rows()
    if rows.numel() == 0:
        return False
    logits = canvas.forward(rows)
    masked = canvas.masked(rows) & canvas.in_range(start, end)
    mask_logits = logits[masked]
    tokens = torch.full_like(masked, canvas.mask_id, dtype=torch.long)
    if alg == "origin":
        p_transfer = 1 - timesteps[i + 1] / timesteps[i] if i < steps - 1 else 1
        x0 = torch.full((mask_logits.shape[0],), canvas.mask_id, device=canvas.device)
        reveal = torch.rand(x0.shape, device=canvas.device) < p_transfer
        if bool(reveal.any()):
            _, x0[reveal] = dream_sample_tokens(mask_logits[reveal], temperature, top_p, top_k)
        tokens[masked] = x0
        canvas.commit(rows, tokens != canvas.mask_id, tokens, step)
        return True
    confidence, x0 = dream_sample_tokens(
        mask_logits, temperature, top_p, top_k, confidence=_CONFIDENCE[alg]
    )
    tokens[masked] = x0
    full = torch.full(masked.shape, float("-inf"), dtype=logits.dtype, device=canvas.device)
    full[masked] = confidence.to(logits.dtype)
    k = dream_transfer_count(masked.sum(1), i, steps, timesteps)
    if not bool((k > 0).any()):
        canvas.commit(rows, torch.zeros_like(masked), tokens, step)
        return True
    if alg_temp is None or alg_temp == 0:
        select = select_top_k(full, masked, k)
    else:
        weights = F.softmax(full / alg_temp, dim=-1)
        select = torch.zeros_like(masked)
        if bool((k == k[0]).all()):  # one call, as the reference makes
            index = torch.multinomial(weights, num_samples=int(k[0]))
            select.scatter_(1, index, True)
        else:
            for r in range(rows.numel()):
                if int(k[r]) == 0:  # a row without masks here (its softmax would be NaN)
                    continue
                index = torch.multinomial(weights[r : r + 1], num_samples=int(k[r]))
                select[r].scatter_(0, index[0], True)
    canvas.commit(rows, select, tokens, step)
    return True
