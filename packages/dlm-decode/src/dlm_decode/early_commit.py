"""Prophet: early commit decoding ("Diffusion Language Models Know the Answer Before Decoding").

Li et al., arXiv:2508.19982 (ICLR 2026); reference code pixeli99/Prophet `generate_earlyexit.py`.
Prophet runs LLaDA's sampler and, at every step after the forward and before the commit, measures
how sure the model is of the answer:

    gap_l   = z_l,(1) - z_l,(2)         top-1 minus top-2 logit at position l
                                        (= log p_(1) - log p_(2): the softmax normaliser cancels)
    g       = mean_{l in A} gap_l       over the answer region A
    progress = step / steps             (steps counted over all blocks, step from 1)
    tau(progress) = 7.5 if progress < 0.33, 5.0 if progress < 0.67, else 2.5

If g >= tau(progress) the sampler stops and commits "all in": every position still masked, in all
blocks, takes this step's x0; no further forward pass (NFE = the exit step). A position whose x0
is the [MASK] id stays masked then (as released); before the exit, masks left in earlier blocks
are re-decoded as in LLaDA's loop (`dlm_decode.remasking`).

The answer region, as released: `answer_length = 5` positions starting at `answer_start`, located
by forcing anchor tokens into the canvas ("The answer is" at generation offsets 200-202 in the
GSM8K script, `answer_start = max(anchor offset) + 2`). Positions count whether masked or not and
may lie in future blocks. Without an anchor the released code never exits.

Ours, not Prophet as released (`region="block"` / `"masked"`): the gap averaged over the masked
positions of the current block / of the whole generation region, so that early commit works
without an answer anchor. Batched rows decide on their own; `reference_quirks=True` instead lets
batch row 0 decide for every row, as the released code's `.item()` on row 0 does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dlm_decode.canvas import Canvas

__all__ = ["ProphetRule", "StagedThresholds", "answer_anchor", "top2_logit_gap"]


@dataclass(frozen=True)
class StagedThresholds:
    """tau(progress): `early` before `early_until`, `mid` before `mid_until`, then `late`.

    Defaults are the released code's (`eval_llada.py`, README): 7.5 / 5.0 / 2.5 at 0.33 / 0.67.
    """

    early: float = 7.5
    mid: float = 5.0
    late: float = 2.5
    early_until: float = 0.33
    mid_until: float = 0.67

    def __call__(self, progress: float) -> float:
        if progress < self.early_until:
            return self.early
        if progress < self.mid_until:
            return self.mid
        return self.late


def top2_logit_gap(logits: torch.Tensor) -> torch.Tensor:
    """z_(1) - z_(2) over the last dim, as `torch.topk(logits, 2)` computes it (logits' dtype)."""
    top2 = torch.topk(logits, 2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def answer_anchor(anchor: str | Mapping[int, str], tokenizer: Any) -> tuple[dict[int, int], int]:
    """Forced tokens and the answer start for Prophet's anchor, as `eval_llada.py` builds them.

    `anchor` is the released syntax "200:The|201:answer|202:is" or a mapping {200: "The", ...};
    each word is tokenised as " " + word and its tokens written from that offset on. Returns
    (constraints {generation offset: token id}, answer_start = max offset + 2).
    """
    if isinstance(anchor, str):
        pairs = []
        for part in anchor.split("|"):
            offset, _, word = part.partition(":")
            if not _ or not offset.strip().lstrip("-").isdigit():
                raise ValueError(
                    f"anchor part {part!r} is not 'offset:word': write e.g. "
                    "'200:The|201:answer|202:is'"
                )
            pairs.append((int(offset), word.strip()))
    else:
        pairs = [(int(offset), word.strip()) for offset, word in anchor.items()]
    constraints: dict[int, int] = {}
    for offset, word in pairs:
        for i, token in enumerate(tokenizer.encode(" " + word, add_special_tokens=False)):
            constraints[offset + i] = int(token)
    if not constraints:
        raise ValueError("the anchor produced no tokens")
    return constraints, max(constraints) + 2


@dataclass
class ProphetRule:
    """The early-commit test (an `EarlyCommitRule` for `decode_semi_autoregressive`)."""

    thresholds: StagedThresholds
    region: str = "answer"  # "answer" (released), "block" or "masked" (ours)
    answer_start: int | None = None  # generation offset of the answer region
    answer_length: int = 5
    reference_quirks: bool = False
    history: list[tuple[int, torch.Tensor]] | None = None  # (step, mean gap per row), if wanted

    def region_mask(self, canvas: Canvas, rows: torch.Tensor, start: int, end: int):
        """(R, L) bool: the positions whose gap is averaged."""
        if self.region == "answer":
            if self.answer_start is None:
                return None
            lo = canvas.prompt_length + self.answer_start
            hi = min(canvas.length, lo + self.answer_length)
            return canvas.in_range(lo, hi).expand(rows.numel(), -1)
        masked = canvas.masked(rows)
        if self.region == "block":
            return masked & canvas.in_range(start, end)
        if self.region == "masked":
            return masked
        raise ValueError(f"region must be 'answer', 'block' or 'masked', got {self.region!r}")

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
        never = torch.zeros(rows.numel(), dtype=torch.bool, device=canvas.device)
        region = self.region_mask(canvas, rows, block_start, block_end)
        if region is None:
            return never  # released behaviour: no anchor, no early exit
        count = region.sum(1)
        if gap is None:
            # The reference's topk on the raw (guided) logits, over the span the region covers
            # only (a slice is a view; boolean indexing would copy through a slow path).
            gap = torch.zeros(region.shape, dtype=torch.float64, device=canvas.device)
            columns = region.any(0).nonzero().flatten()
            if columns.numel():
                lo, hi = int(columns[0]), int(columns[-1]) + 1
                gap[:, lo:hi] = top2_logit_gap(logits[:, lo:hi]).double()
        mean_gap = (gap.double() * region).sum(1) / count.clamp(min=1)
        if self.history is not None:
            self.history.append((step, mean_gap.cpu()))
        tau = self.thresholds(step / total_steps)
        decide = (mean_gap >= tau) & (count > 0)
        if self.reference_quirks:
            return decide[:1].expand(rows.numel()).clone()
        return decide
