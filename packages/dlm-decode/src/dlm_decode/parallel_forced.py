"""NAP's parallel-forced decoding: a fixed number of positions committed at every step, spread
over independent segments of the canvas.

Li, Muhtar, Chen, Yin, Liu, "Why Diffusion Language Models Struggle with Truly Parallel
(Non-Autoregressive) Decoding?", arXiv:2602.23225 (NAP); code pixeli99/NAP. The output canvas is
m independent reasoning segments and a summary, `[<think 1> R1 ... <think m> Rm <summary> S]`, and
decoding forces parallelism at two scales (README, "Decoding policy"):

    macro-parallel     every step, the unmasking budget k (`tokens_per_step`) is spread over all
                       segments that still have masks:  k = sum_j k_j
    micro-confidence   inside segment j, the k_j masked positions of highest confidence
                       c_l = softmax(f(x))_l[x0_l] are committed (not left to right)

    k_j = floor(k r_j / R) + [one of the k - sum floor(.) largest remainders]   (R = sum_j r_j)

r_j is segment j's masks; the largest-remainder rounding (ties: leftmost segment) gives exactly k
per step while R >= k and keeps the segments finishing together. The run takes ceil(M / k)
forwards, M = masks at the start (the generation region minus any `constraints`); every step
commits k positions except the last, which commits the remaining M - k (ceil(M / k) - 1).

Sources and what is ours. The released repository holds the training code only (its README lists
"Inference and evaluation code" as to come), so the budget split above is read from the README's
two sentences and its tables (steps x tokens/step = the 1024-token budget: 1024 x 1, 512 x 2,
256 x 4); the proportional largest-remainder split, the leftover of a short last step and
`summary_last` are ours. `summary_last=True` gives the last segment (the summary) only the budget
the reasoning segments cannot use; it follows the training side, where NAP's structured masking
(`src/diffllm/gen_utils.py`, `q_sample` with `structure_cfg`) hides the whole summary until
1 - t >= rpim_alpha = 0.8, i.e. the summary is learned from nearly finished reasoning.

With one segment this is LLaDA's sampler with one block and k tokens per step: tokens_per_step=1
is `LLaDA(steps=gen_length, block_length=gen_length)` token for token and in NFE, and any k that
divides gen_length is `LLaDA(steps=gen_length // k, block_length=gen_length)`. When k does not
divide M, LLaDA's schedule with ceil(M / k) steps spreads the shortfall over the first steps
(10 masks, k = 4: LLaDA 4, 3, 3), ours over the last (4, 4, 2): k is fixed, as NAP asks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator

from dlm_decode._base import _StrategyConfig, _Validated
from dlm_decode.canvas import Canvas
from dlm_decode.remasking import select_top_k, token_confidence

__all__ = [
    "ParallelForced",
    "ParallelForcedConfig",
    "decode_parallel_forced",
    "segment_bounds",
    "split_budget",
]


class ParallelForcedConfig(_StrategyConfig):
    """NAP's parallel-forced decoding. Defaults: one token per step over one segment, i.e. the
    1024-step row of NAP's tables (tokens_per_step 2 / 3 / 4 are its faster rows)."""

    tokens_per_step: int = Field(1, ge=1)  # k: positions committed at every step
    segments: int | tuple[int, ...] = 1  # m equal segments, or their lengths (sum = gen_length)
    summary_last: bool = False  # the last segment gets only the budget the others cannot use
    temperature: float = Field(0.0, ge=0)  # Gumbel-max sampling temperature; 0: argmax
    remasking: Literal["low_confidence", "random"] = "low_confidence"  # order inside a segment
    backend: Literal["auto", "torch", "triton"] = "auto"  # backend of the top-2 confidence op

    @field_validator("segments")
    @classmethod
    def _positive_segments(cls, value: int | tuple[int, ...]) -> int | tuple[int, ...]:
        lengths = (value,) if isinstance(value, int) else value
        if not lengths or min(lengths) < 1:
            raise ValueError(
                f"segments must be a count >= 1 or a list of lengths >= 1, got {value!r}"
            )
        return value

    def build(self) -> ParallelForced:
        return ParallelForced(**self._options(ParallelForced))


_DEFAULTS = ParallelForcedConfig()


def segment_bounds(gen_length: int, segments: int | Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) generation offsets of the segments.

    An int m cuts gen_length into m contiguous parts whose lengths differ by at most one (the
    first gen_length % m are one longer); a sequence gives the lengths, which must sum to
    gen_length.
    """
    if isinstance(segments, int):
        if not 1 <= segments <= gen_length:
            raise ValueError(f"segments={segments} must be between 1 and gen_length {gen_length}")
        base, extra = divmod(gen_length, segments)
        lengths = [base + (j < extra) for j in range(segments)]
    else:
        lengths = [int(n) for n in segments]
        if sum(lengths) != gen_length or min(lengths) < 1:
            raise ValueError(
                f"segment lengths {lengths} must be >= 1 and sum to gen_length {gen_length} "
                f"(they sum to {sum(lengths)}): fix the lengths or pass a count, segments=m"
            )
    return list(itertools.pairwise(itertools.accumulate(lengths, initial=0)))


def split_budget(remaining: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """(R, m) commits per segment: budget[r] spread over the segments in proportion to their
    remaining masks (largest-remainder rounding, ties to the leftmost segment).

    Sums to min(budget[r], remaining[r].sum()) and never exceeds a segment's masks.
    Example: remaining [5, 3, 0], budget 4 -> exact 2.5, 1.5, 0 -> floors 2, 1, 0 -> the one
    left over goes to the first of the equal remainders -> [3, 1, 0].
    """
    remaining = remaining.long()
    total = remaining.sum(1, keepdim=True)
    b = torch.minimum(budget.reshape(-1, 1).long(), total)
    safe = total.clamp(min=1)
    scaled = b * remaining
    share, fraction = scaled // safe, scaled % safe
    leftover = (b - share.sum(1, keepdim=True)).squeeze(1)
    order = torch.sort(fraction, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous()
    )
    return share + (rank < leftover[:, None]).long()


def decode_parallel_forced(
    canvas: Canvas,
    *,
    tokens_per_step: int = _DEFAULTS.tokens_per_step,
    segments: int | Sequence[int] = _DEFAULTS.segments,
    summary_last: bool = _DEFAULTS.summary_last,
    temperature: float = _DEFAULTS.temperature,
    remasking: str = _DEFAULTS.remasking,
    generator: torch.Generator | None = None,
    backend: str = _DEFAULTS.backend,
) -> None:
    """Run NAP's parallel-forced decoding on `canvas` (in place); see the module docstring.

    Each of the ceil(M / k) steps feeds the rows that still have masks once (one NFE each),
    takes x0 and the confidence as LLaDA does (`token_confidence`), and commits
    `split_budget(masks per segment, k)` positions per segment by confidence. A position whose
    x0 is the [MASK] id stays masked and is offered again at the next step.
    """
    if tokens_per_step < 1:
        raise ValueError(f"tokens_per_step must be >= 1, got {tokens_per_step}")
    bounds = segment_bounds(canvas.gen_length, segments)
    if summary_last and len(bounds) < 2:
        raise ValueError(
            "summary_last=True needs at least two segments (reasoning and summary): "
            "pass segments=m with m >= 2"
        )
    spans = [canvas.in_range(canvas.prompt_length + s, canvas.prompt_length + e) for s, e in bounds]
    in_segment = torch.cat(spans)  # (m, L)
    masks_at_start = int((canvas.x[:, canvas.prompt_length :] == canvas.mask_id).sum(1).max())
    steps = math.ceil(masks_at_start / tokens_per_step)
    for step in range(1, steps + 1):
        rows = canvas.active_rows()
        rows = rows[canvas.masked(rows).any(1)]
        if rows.numel() == 0:
            return
        logits = canvas.forward(rows)
        x0, confidence, _ = token_confidence(
            logits,
            temperature=temperature,
            remasking=remasking,
            softmax_dtype=None,
            generator=generator,
            backend=backend,
        )
        masked = canvas.masked(rows)
        per_segment = (masked[:, None, :] & in_segment[None]).sum(2)  # (R, m)
        budget = torch.full((rows.numel(),), tokens_per_step, device=canvas.device)
        if summary_last:
            reasoning = split_budget(per_segment[:, :-1], budget)
            rest = budget - reasoning.sum(1)
            summary = torch.minimum(rest, per_segment[:, -1])
            quota = torch.cat([reasoning, summary[:, None]], dim=1)
        else:
            quota = split_budget(per_segment, budget)
        select = torch.zeros_like(masked)
        for j, span in enumerate(in_segment):
            select |= select_top_k(confidence, masked & span[None], quota[:, j])
        canvas.commit(rows, select, x0, step)


@dataclass
class ParallelForced(_Validated):
    """NAP's parallel-forced decoding (arXiv:2602.23225): `tokens_per_step` positions committed at
    every step, spread over `segments` (the independent reasoning trajectories of NAP's canvas)
    and chosen by confidence inside each. One segment and one token per step is LLaDA's sampler
    with steps == gen_length and one block. NFE = ceil(masks / tokens_per_step) per row."""

    config_class: ClassVar[type[_StrategyConfig]] = ParallelForcedConfig

    tokens_per_step: int = _DEFAULTS.tokens_per_step
    segments: int | tuple[int, ...] = _DEFAULTS.segments
    summary_last: bool = _DEFAULTS.summary_last
    temperature: float = _DEFAULTS.temperature
    remasking: str = _DEFAULTS.remasking
    backend: str = _DEFAULTS.backend
    _masks: int = field(default=0, init=False, repr=False)

    @property
    def step_budget(self) -> int:
        """Forwards of the full schedule: ceil(M / tokens_per_step), M = masks at the start of the
        last run (0 before any run)."""
        return math.ceil(self._masks / self.tokens_per_step)

    def run(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        self._masks = int((canvas.x[:, canvas.prompt_length :] == canvas.mask_id).sum(1).max())
        segments = self.segments if isinstance(self.segments, int) else tuple(self.segments)
        decode_parallel_forced(
            canvas,
            tokens_per_step=self.tokens_per_step,
            segments=segments,
            summary_last=self.summary_last,
            temperature=self.temperature,
            remasking=self.remasking,
            generator=generator,
            backend=self.backend,
        )
