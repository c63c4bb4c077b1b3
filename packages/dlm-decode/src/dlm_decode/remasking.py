"""LLaDA's reverse process: semi-autoregressive blocks with low-confidence or random remasking.

Nie et al., "Large Language Diffusion Models", arXiv:2502.09992 (Alg. 5, App. B.2); reference code
ML-GSAI/LLaDA `generate.py`. The generation region (G tokens) is cut into G / block_length blocks
decoded left to right, each in `steps_per_block = steps / num_blocks` steps. At step i of block b:

    logits  = f(x)                                 (whole sequence, future blocks still masked)
    x0      = argmax(logits + T * Gumbel)          (T = 0: plain argmax; sampling from softmax(z/T))
    c_l     = softmax(logits)_l[x0_l]              (low confidence; untempered) or U(0, 1) (random)
    commit the k_{b,i} masked positions of block b with the highest c_l

where k_{b,i} spreads the block's n masks evenly: n // steps_per_block each step, the first
n % steps_per_block steps one more (the linear schedule: E[masks revealed] is constant per step).
Positions past the current block get c = -inf, so no later block commits.

Leftover masks. A model may predict the [MASK] id itself; the position it "commits" then stays
masked. The released `generate.py` (and Prophet's `generate_earlyexit.py`) set c = -inf only
*right* of the current block, so such a leftover in an earlier block stays a candidate and is
re-decoded in a later step, competing with the current block for its k_{b,i} slots (the schedule
counts the current block's masks only). We do the same, with and without `reference_quirks`: a
[MASK] left in the output is a bug for the user, and this is the released behaviour. A mask still
survives when the model predicts [MASK] at the last step that could take it (the last block's).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from dlm_decode.canvas import Canvas
from layerwise_kernels.top2_confidence import top2_confidence

__all__ = [
    "EarlyCommitRule",
    "decode_semi_autoregressive",
    "gumbel_argmax",
    "select_top_k",
    "transfer_schedule",
]


def transfer_schedule(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to reveal per step, (B, steps): n // steps each, +1 for the first n % steps steps.

    Example: 10 masks in 4 steps -> [3, 3, 2, 2]. Computed once per block from its masks.
    """
    counts = mask_counts.long().reshape(-1, 1)
    base, remainder = counts // steps, counts % steps
    step_index = torch.arange(steps, device=counts.device)[None, :]
    return base + (step_index < remainder).long()


def gumbel_argmax(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None = None,
    reference_quirks: bool = False,
) -> torch.Tensor:
    """A sample of softmax(logits / T) per position by the Gumbel-max trick, in fp64.

        x0 = argmax(z + T * g),   g = -log(-log u),   u ~ U(0, 1)

    LLaDA computes the same argmax as `exp(z) / (-log u)^T` (`reference_quirks=True` does that
    bit for bit); the log form here cannot overflow exp(z). Both draw u with one `torch.rand` of
    the logits' shape in fp64, so a seed gives the same u. T = 0 is the plain argmax.
    """
    if temperature == 0:
        return logits.argmax(-1)
    z = logits.to(torch.float64)
    u = torch.rand(z.shape, dtype=torch.float64, device=z.device, generator=generator)
    if reference_quirks:
        return (z.exp() / (-torch.log(u)) ** temperature).argmax(-1)
    return (z - temperature * torch.log(-torch.log(u))).argmax(-1)


def select_top_k(
    confidence: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """(R, L) bool: for each row the k[r] candidate positions of highest confidence.

    Vectorised form of LLaDA's per-row `topk(confidence[j], k[j])` (one topk of the largest k).
    A row never gets more positions than it has candidates.
    """
    k = torch.minimum(k.reshape(-1), candidates.sum(1))
    select = torch.zeros_like(candidates)
    k_max = int(k.max()) if k.numel() else 0
    if k_max == 0:
        return select
    scores = confidence.masked_fill(~candidates, float("-inf"))
    index = torch.topk(scores, k_max, dim=-1).indices
    take = torch.arange(k_max, device=k.device)[None, :] < k[:, None]
    return select.scatter_(1, index, take) & candidates


def token_confidence(
    logits: torch.Tensor,
    *,
    temperature: float,
    remasking: str,
    softmax_dtype: torch.dtype | None,
    generator: torch.Generator | None = None,
    reference_quirks: bool = False,
    backend: str = "auto",
):
    """(x0, confidence, gap or None) for every position of logits (R, L, V).

    `softmax_dtype=None`: the fused `top2_confidence` op (fp32, no softmax tensor); with T > 0
    the probability of the sampled token is p(x0) = p_(1) * exp(z_x0 - z_(1)). A dtype: the
    reference's `softmax(logits.to(dtype))[x0]` (LLaDA: the logits' dtype; Fast-dLLM: fp64).
    `gap` (top-1 minus top-2 logit) comes for free with the fused op.
    """
    x0 = (
        None
        if temperature == 0
        else gumbel_argmax(logits, temperature, generator, reference_quirks)
    )
    gap = None
    if remasking == "low_confidence":
        if softmax_dtype is not None:
            x0 = logits.argmax(-1) if x0 is None else x0
            p = F.softmax(logits.to(softmax_dtype), dim=-1)
            confidence = p.gather(-1, x0[..., None]).squeeze(-1)
        else:
            top = top2_confidence(logits, backend=backend)
            gap = top.gap
            if x0 is None:
                x0, confidence = top.token, top.prob
            else:
                z = logits.float()
                shift = z.gather(-1, x0[..., None]) - z.gather(-1, top.token[..., None])
                confidence = top.prob * shift.squeeze(-1).exp()
    elif remasking == "random":
        x0 = logits.argmax(-1) if x0 is None else x0
        confidence = torch.rand(
            x0.shape, device=x0.device, generator=generator, dtype=torch.float32
        )
    else:
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    return x0, confidence, gap


class EarlyCommitRule(Protocol):
    """Decides, after the forward and before the commit, which rows stop and commit everything."""

    def should_commit(
        self,
        canvas: Canvas,
        rows: torch.Tensor,
        logits: torch.Tensor,
        gap: torch.Tensor | None,
        step: int,
        total_steps: int,
        block_start: int,
        block_end: int,
    ) -> torch.Tensor:
        """(R,) bool."""
        ...


def never_the_mask(logits, x0, confidence, mask_id, remasking):
    """Where x0 (R, L) is the [MASK] id, the most likely other token and, for low-confidence
    remasking, its full-softmax probability: committing [MASK] changes nothing, so a loop that
    runs until every position is decoded could never end. Costs a host sync and, only where x0
    is [MASK], a softmax over the vocabulary."""
    bad = x0 == mask_id
    if not bool(bad.any()):
        return x0, confidence
    picked = logits[bad].float()
    probs = torch.softmax(picked, dim=-1)
    picked[:, mask_id] = -torch.inf
    alt = picked.argmax(-1)
    x0 = x0.masked_scatter(bad, alt)
    if remasking == "low_confidence":
        p_alt = probs.gather(-1, alt[:, None]).squeeze(-1).to(confidence.dtype)
        confidence = confidence.masked_scatter(bad, p_alt)
    return x0, confidence


def split_steps(
    gen_length: int, block_length: int, steps: int, one_block: str | None = None
) -> tuple[int, int]:
    """(number of blocks, steps per block) of a semi-autoregressive schedule: `steps` split evenly
    over `gen_length / block_length` blocks; anything else is a ValueError naming the fix
    (`one_block`: how the caller spells "one block", default `block_length=<gen_length>`)."""
    if block_length < 1 or gen_length % block_length:
        one_block = one_block or f"block_length={gen_length}"
        raise ValueError(
            f"gen_length {gen_length} must be a multiple of block_length {block_length}: "
            f"e.g. {one_block} (one block) or a divisor of {gen_length}"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks or steps < num_blocks:
        raise ValueError(
            f"steps {steps} must be a positive multiple of the number of blocks {num_blocks} "
            f"(gen_length / block_length): e.g. steps={num_blocks * max(1, steps // num_blocks)}"
        )
    return num_blocks, steps // num_blocks


def decode_semi_autoregressive(
    canvas: Canvas,
    *,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    reference_quirks: bool = False,
    early_commit: EarlyCommitRule | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> None:
    """Run LLaDA's sampler on `canvas` (in place); `early_commit` turns it into Prophet.

    EOS options (LLaDA App. B.4): `logits_eos_inf` sets the EOS logit to -inf before sampling.
    `confidence_eos_eot_inf` ranks positions that predict EOS/EoT below every other position of
    the block (they are committed last). `reference_quirks=True` reproduces the released code
    instead: its line `logits_with_noise[:, :, EOS] = logits[:, :, EoT] = -inf` runs after x0 is
    taken: with T > 0 only EoT leaves the confidence softmax (an EoT prediction gets confidence 0,
    EOS predictions are untouched); with T = 0 `logits_with_noise` is the same tensor as `logits`,
    so EOS leaves it too. The confidence softmax then runs in the logits' dtype.
    """
    gen_length = canvas.gen_length
    num_blocks, steps_per_block = split_steps(gen_length, block_length, steps)
    lm = canvas.lm
    if (logits_eos_inf or confidence_eos_eot_inf) and lm.eos_token_id is None:
        raise ValueError(
            "logits_eos_inf / confidence_eos_eot_inf need the EOS id: pass eos_token_id=... to "
            "as_masked_diffusion_lm"
        )
    end_ids = [t for t in (lm.eos_token_id, lm.eot_token_id) if t is not None]
    exact_softmax = reference_quirks and remasking == "low_confidence"
    global_step = 0
    for block in range(num_blocks):
        start, end = canvas.block_bounds(block, block_length)
        block_masks = (canvas.x[:, start:end] == canvas.mask_id).sum(1)
        schedule = transfer_schedule(block_masks, steps_per_block)
        for i in range(steps_per_block):
            global_step += 1
            rows = canvas.active_rows()
            if rows.numel() == 0:
                return
            logits = canvas.forward(rows)
            if logits_eos_inf:
                logits[..., lm.eos_token_id] = float("-inf")
            if exact_softmax:
                x0 = gumbel_argmax(logits, temperature, generator, reference_quirks=True)
                conf_logits = logits
                if confidence_eos_eot_inf:
                    # At T = 0 the released code's `logits_with_noise` *is* `logits`, so its
                    # chained assignment removes EOS as well as EoT from the softmax.
                    conf_logits = logits.clone()
                    removed = [lm.eot_token_id] + ([lm.eos_token_id] if temperature == 0 else [])
                    for token in removed:
                        if token is not None:
                            conf_logits[..., token] = float("-inf")
                p = F.softmax(conf_logits, dim=-1)
                confidence, gap = p.gather(-1, x0[..., None]).squeeze(-1), None
            else:
                x0, confidence, gap = token_confidence(
                    logits,
                    temperature=temperature,
                    remasking=remasking,
                    softmax_dtype=None,
                    generator=generator,
                    reference_quirks=reference_quirks,
                    backend=backend,
                )
            if confidence_eos_eot_inf and not reference_quirks:
                predicts_end = torch.zeros_like(x0, dtype=torch.bool)
                for token in end_ids:
                    predicts_end |= x0 == token
                confidence = torch.where(predicts_end, confidence - 2.0, confidence)
            masked = canvas.masked(rows)
            keep = rows
            if early_commit is not None:
                stop = early_commit.should_commit(
                    canvas, rows, logits, gap, global_step, steps, start, end
                )
                if bool(stop.any()):
                    # Prophet's all-in commit: every remaining mask takes this step's x0.
                    canvas.commit(rows[stop], masked[stop], x0[stop], global_step)
                    canvas.exit_step[rows[stop]] = global_step
                    canvas.finish(rows[stop])
                    keep = rows[~stop]
                    x0, confidence, masked = x0[~stop], confidence[~stop], masked[~stop]
                    if keep.numel() == 0:
                        continue
            # Everything masked left of the block end: the current block and the leftovers of
            # earlier blocks (positions where the model predicted [MASK]), as released.
            candidates = masked & canvas.in_range(0, end)
            select = select_top_k(confidence, candidates, schedule[keep, i])
            canvas.commit(keep, select, x0, global_step)
