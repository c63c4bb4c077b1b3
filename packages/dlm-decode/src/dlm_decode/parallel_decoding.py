"""Fast-dLLM's confidence-aware parallel decoding (threshold and factor rules), with its KV caches.

Wu et al., "Fast-dLLM", arXiv:2505.22618; reference code NVlabs/Fast-dLLM `llada/generate.py`
(`get_transfer_index`, `get_transfer_index_dynamic`, `generate_with_prefix_cache`,
`generate_with_dual_cache`). Blocks are decoded left to right; within block b, with c_l the
probability of the argmax token at each masked position l of the block:

- threshold rule: commit {l : c_l >= tau} and always the most confident position
  (tau = 0.9 in the paper's runs), so every step makes progress;
- factor rule: sort c_(1) >= c_(2) >= ... and commit the largest n with
  c_(j) >= 1 - f / (j + 1) for every j <= n (at least one);
- neither: LLaDA's fixed schedule (`steps` then matters).

A block loops until none of its positions is masked, so the number of forward evaluations depends
on the model's confidence. Hence no [MASK] leftover can sit left of the current block (the released
loops exclude only positions right of it, which is therefore the same candidate set); a model
that keeps predicting the [MASK] id at T = 0 makes the block loop forever, as released. Each row runs its own blocks: a row that finishes its block moves on (no
cache) or waits without forwards (caches: rows share the block so that they share the window).
"""

from __future__ import annotations

import torch

from dlm_decode.canvas import Canvas
from dlm_decode.kv_cache import BlockKVCache, cached_logits
from dlm_decode.remasking import (
    gumbel_argmax,
    never_the_mask,
    select_top_k,
    token_confidence,
    transfer_schedule,
)

__all__ = ["decode_parallel", "factor_rule", "threshold_rule"]


def threshold_rule(confidence: torch.Tensor, candidates: torch.Tensor, threshold: float):
    """(R, L) bool: candidates with c >= threshold, plus each row's most confident candidate."""
    scores = confidence.masked_fill(~candidates, float("-inf"))
    select = (scores >= threshold) & candidates
    has_any = candidates.any(1)
    best = scores.argmax(1)
    select[has_any, best[has_any]] = True
    return select


def factor_rule(
    confidence: torch.Tensor,
    candidates: torch.Tensor,
    factor: float,
    reference_quirks: bool = False,
) -> torch.Tensor:
    """(R, L) bool: the largest n with sorted c_(j) >= 1 - f / (j + 1) for all j <= n, n >= 1.

    `reference_quirks=True`: the released loop breaks at the first failing index and, when that
    index is the last one, still commits it (all n candidates are then taken).
    """
    scores = confidence.masked_fill(~candidates, float("-inf"))
    count = candidates.sum(1)
    ordered = scores.sort(dim=1, descending=True).values
    j = torch.arange(1, scores.shape[1] + 1, device=scores.device, dtype=ordered.dtype)
    passes = ordered >= 1 - factor / (j + 1)
    passes[:, 0] = True
    passes &= j[None, :] <= count[:, None]
    n = passes.long().cumprod(1).sum(1)  # length of the passing prefix
    if reference_quirks:
        n = torch.where(n == count - 1, count, n)
    return select_top_k(confidence, candidates, n)


def _confidence(canvas, logits, temperature, remasking, reference_quirks, generator, backend):
    if reference_quirks and remasking == "low_confidence":
        x0 = gumbel_argmax(logits, temperature, generator, reference_quirks=True)
        p = torch.softmax(logits.to(torch.float64), dim=-1)
        return x0, p.gather(-1, x0[..., None]).squeeze(-1)
    x0, confidence, _ = token_confidence(
        logits,
        temperature=temperature,
        remasking=remasking,
        softmax_dtype=None,
        generator=generator,
        reference_quirks=reference_quirks,
        backend=backend,
    )
    return x0, confidence


def decode_parallel(
    canvas: Canvas,
    *,
    block_length: int,
    threshold: float | None = 0.9,
    factor: float | None = None,
    steps: int | None = None,
    cache: str | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    reference_quirks: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> None:
    """Run Fast-dLLM on `canvas` (in place). `cache`: None, "prefix" or "dual"."""
    gen_length = canvas.gen_length
    if gen_length % block_length:
        raise ValueError(
            f"gen_length {gen_length} must be a multiple of block_length {block_length}"
        )
    num_blocks = gen_length // block_length
    if factor is not None:
        threshold = None  # as released: the factor rule, when given, replaces the threshold
    if threshold is None and factor is None and (steps is None or steps % num_blocks):
        raise ValueError(
            f"without threshold or factor the fixed schedule needs steps, a multiple of the "
            f"number of blocks {num_blocks}"
        )
    if cache not in (None, "prefix", "dual"):
        raise ValueError(f"cache must be None, 'prefix' or 'dual', got {cache!r}")
    if cache is not None and canvas.cfg_scale > 0:
        raise ValueError("Fast-dLLM's caches do not run with classifier-free guidance: cfg_scale=0")
    steps_per_block = None if steps is None else steps // num_blocks

    def choose(confidence, candidates, rows, step_in_block, schedule):
        if threshold is not None:
            return threshold_rule(confidence, candidates, threshold)
        if factor is not None:
            return factor_rule(confidence, candidates, factor, reference_quirks)
        return select_top_k(confidence, candidates, schedule[rows, step_in_block[rows]])

    def predict(logits):
        x0, confidence = _confidence(
            canvas, logits, temperature, remasking, reference_quirks, generator, backend
        )
        if not reference_quirks:
            x0, confidence = never_the_mask(logits, x0, confidence, canvas.mask_id, remasking)
        return x0, confidence

    # The released loops run until the block is decoded; a model that predicts [MASK] at the most
    # confident position commits nothing and (at T = 0) loops forever. Ours never predicts [MASK]
    # (`remasking.never_the_mask`); under reference_quirks a block that outlives this many passes
    # stops with an error instead of hanging.
    limit = max(block_length, steps_per_block or 0) + 1

    if cache is None:
        _decode_without_cache(
            canvas, block_length, num_blocks, steps_per_block, predict, choose, limit
        )
    else:
        _decode_with_cache(
            canvas, block_length, num_blocks, steps_per_block, cache, predict, choose, limit
        )


def _check_progress(step_in_block: torch.Tensor, rows: torch.Tensor, limit: int) -> None:
    if bool((step_in_block[rows] > limit).any()):
        raise RuntimeError(
            f"a block is still not decoded after {limit} passes: the model keeps predicting "
            "[MASK] where it must commit (the released Fast-dLLM loop never ends here); use "
            "reference_quirks=False, which never commits [MASK]"
        )


def _block_masks(canvas: Canvas, block: torch.Tensor, block_length: int) -> torch.Tensor:
    start, end = canvas.block_bounds(block, block_length)
    return (canvas.x == canvas.mask_id) & canvas.in_range(start, end)


def _decode_without_cache(
    canvas, block_length, num_blocks, steps_per_block, predict, choose, limit
):
    device = canvas.device
    block = torch.zeros(canvas.batch, dtype=torch.long, device=device)
    step_in_block = torch.zeros_like(block)
    schedule = torch.zeros(canvas.batch, steps_per_block or 1, dtype=torch.long, device=device)

    def enter_blocks(rows: torch.Tensor) -> None:
        """Move each row to its next block with masks (skipping full ones), or finish it."""
        for row in rows.tolist():
            while int(block[row]) < num_blocks:
                start, end = canvas.block_bounds(int(block[row]), block_length)
                masks = int((canvas.x[row, start:end] == canvas.mask_id).sum())
                if masks:
                    if steps_per_block:
                        count = torch.tensor([masks], device=device)
                        schedule[row] = transfer_schedule(count, steps_per_block)[0]
                    step_in_block[row] = 0
                    break
                block[row] += 1
            if int(block[row]) >= num_blocks:
                canvas.finish(torch.tensor([row], device=device))

    enter_blocks(canvas.active_rows())
    step = 0
    while True:
        rows = canvas.active_rows()
        if rows.numel() == 0:
            return
        step += 1
        logits = canvas.forward(rows)
        x0, confidence = predict(logits)
        start, end = canvas.block_bounds(block[rows], block_length)
        in_block = canvas.in_range(start, end)
        select = choose(confidence, canvas.masked(rows) & in_block, rows, step_in_block, schedule)
        canvas.commit(rows, select, x0, step)
        step_in_block[rows] += 1
        done = ~(canvas.masked(rows) & in_block).any(1) & canvas.active[rows]
        _check_progress(step_in_block, rows[~done], limit)
        block[rows[done]] += 1
        enter_blocks(rows[done])


def _decode_with_cache(
    canvas, block_length, num_blocks, steps_per_block, mode, predict, choose, limit
):
    """Per block: one refresh pass (full forward, records K/V, takes the block's first step), then
    cached passes while the block still has masks. NFE of a block = 1 + (cached passes needed).

    Released NFE differs (Fast-dLLM `llada/generate.py`, `generate_with_prefix_cache` and
    `generate_with_dual_cache` alike): after the block-start pass both run
    `i = 1; while True: nfe += 1; <cached forward>; <commit>; if no mask left in the block:
    break` -- a do-while, so at least one cached pass follows the block-start pass even when that
    pass has already decoded the whole block (threshold rule with every position confident,
    block_length 1, or a fixed schedule whose first step takes every mask, e.g. a block with one
    mask left; with one step per block the released fixed schedule instead fails on index 1);
    that pass commits nothing. We test before each cached pass, so per block
        released NFE = ours + 1   if the block-start pass left no mask in the block,
        released NFE = ours       otherwise (both then stop after the pass that decodes the last).
    Tokens are the same. (Their no-cache `generate` tests after each forward too, but it has no
    separate block-start pass, so it matches ours -- apart from a block with no mask on entry,
    e.g. filled by constraints, where it still runs one forward and ours runs none.)
    """
    device, lm = canvas.device, canvas.lm
    step_in_block = torch.zeros(canvas.batch, dtype=torch.long, device=device)
    schedule = torch.zeros(canvas.batch, steps_per_block or 1, dtype=torch.long, device=device)
    step = 0
    for block in range(num_blocks):
        start, end = canvas.block_bounds(block, block_length)
        window_end = end if mode == "dual" else canvas.length
        masks = (canvas.x[:, start:end] == canvas.mask_id).sum(1)
        rows = (canvas.active & (masks > 0)).nonzero().flatten()
        if rows.numel() == 0:
            continue
        if steps_per_block:
            schedule[rows] = transfer_schedule(masks[rows], steps_per_block)
        step_in_block[rows] = 0
        key_mask = None if canvas.key_mask is None else canvas.key_mask[rows]
        # Refresh: a full forward records every layer's K/V and takes the block's first step.
        kv = BlockKVCache()
        step += 1
        canvas.count(rows)
        logits = cached_logits(lm, canvas.x[rows], key_mask, kv)
        x0, confidence = predict(logits)
        candidates = canvas.masked(rows) & canvas.in_range(start, end)
        canvas.commit(rows, choose(confidence, candidates, rows, step_in_block, schedule), x0, step)
        step_in_block[rows] += 1
        refreshed = rows
        while True:
            left = (canvas.x[refreshed, start:end] == canvas.mask_id).any(1)
            left &= canvas.active[refreshed]
            if not bool(left.any()):
                break
            sub = left.nonzero().flatten()  # rows of the refresh batch, as the cache holds them
            rows = refreshed[sub]
            _check_progress(step_in_block, rows, limit)
            step += 1
            canvas.count(rows)
            logits = cached_logits(
                lm,
                canvas.x[rows],
                None if key_mask is None else key_mask[sub],
                kv,
                window=(start, window_end),
                rows=sub,
            )
            x0, confidence = predict(logits)
            window = canvas.x[rows, start:window_end]
            offsets = torch.arange(window_end - start, device=device)[None, :]
            candidates = (window == canvas.mask_id) & (offsets < end - start)
            chosen = choose(confidence, candidates, rows, step_in_block, schedule)
            select = torch.zeros(rows.numel(), canvas.length, dtype=torch.bool, device=device)
            tokens = canvas.x[rows].clone()
            select[:, start:window_end], tokens[:, start:window_end] = chosen, x0
            canvas.commit(rows, select, tokens, step)
            step_in_block[rows] += 1
