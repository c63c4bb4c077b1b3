"""Repetition of generated text: how outputs degenerate into loops once the super-outlier channel is
removed (DLM-vs-AR study, arXiv 2605.06366, spec B.4). For one token sequence x_1 .. x_T::

    repeated n-gram share  = #{i : (x_i .. x_{i+n-1}) occurred at some j < i} / (T - n + 1)
    longest loop           = the longest stretch x_a .. x_b that repeats a unit of some period p
                             at least twice (x_i = x_{i-p} for a + p <= i <= b, b - a + 1 >= 2p),
                             in tokens; its period is reported with it

E.g. "a b a b a b" with n = 2: 2-grams ab ba ab ba ab, 3 of 5 repeated; longest loop 6, period 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["RepetitionMetrics", "longest_loop", "repeated_ngram_share", "repetition_metrics"]


def _tokens(sequence: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(sequence, torch.Tensor):
        if sequence.dim() != 1:
            raise ValueError(f"expected one 1-D token sequence, got shape {tuple(sequence.shape)}")
        return sequence.tolist()
    return [int(x) for x in sequence]


def repeated_ngram_share(sequence: Sequence[int] | torch.Tensor, n: int = 4) -> float:
    """Share of the n-grams of `sequence` that already occurred earlier in it (0 if it has none)."""
    if n < 1:
        raise ValueError(f"repeated_ngram_share: n must be >= 1, got {n}")
    tokens = _tokens(sequence)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams)


def longest_loop(sequence: Sequence[int] | torch.Tensor) -> tuple[int, int]:
    """(length in tokens, period) of the longest stretch made of >= 2 repeats of one unit
    (module docstring); (0, 0) when nothing repeats back to back. Shortest period on ties."""
    tokens = _tokens(sequence)
    best = (0, 0)
    for period in range(1, len(tokens) // 2 + 1):
        run = 0  # consecutive i with x_i == x_{i - period}
        for i in range(period, len(tokens)):
            run = run + 1 if tokens[i] == tokens[i - period] else 0
            if run >= period and run + period > best[0]:
                best = (run + period, period)
    return best


@dataclass
class RepetitionMetrics:
    repeated_ngram_share: float  # mean over sequences
    longest_loop: float  # mean over sequences, tokens
    per_sequence: list[dict]
    n: int = 4

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "repeated_ngram_share": self.repeated_ngram_share,
            "longest_loop": self.longest_loop,
            "per_sequence": self.per_sequence,
        }


def repetition_metrics(
    sequences: Sequence[Sequence[int]] | torch.Tensor, n: int = 4
) -> RepetitionMetrics:
    """`repeated_ngram_share` and `longest_loop` of every sequence (e.g. the new tokens of each
    generation, padding and EOS stripped) and their means."""
    rows = [_tokens(s) for s in sequences]
    if not rows:
        raise ValueError("repetition_metrics: no sequences")
    per = []
    for row in rows:
        length, period = longest_loop(row)
        per.append(
            {
                "repeated_ngram_share": repeated_ngram_share(row, n),
                "longest_loop": length,
                "loop_period": period,
            }
        )
    return RepetitionMetrics(
        repeated_ngram_share=sum(p["repeated_ngram_share"] for p in per) / len(per),
        longest_loop=sum(p["longest_loop"] for p in per) / len(per),
        per_sequence=per,
        n=n,
    )
