"""Layer-removal sweeps: score the model with each candidate set of blocks removed.

    dP(S) = P(model without blocks S) - P(model)

for S = each single block ("The Curse of Depth"; LayerNorm-Scaling's `layer_remove.py`), each
contiguous block of n layers (Gromov et al.), or the n lowest-Block-Influence layers (ShortGPT).
Each candidate is scored inside `skip_layers`, so a sweep holds ONE model in memory and costs one
scorer call of a smaller model per candidate: no copy, no reload.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from depth_probe.block_influence import lowest_influence_layers
from depth_probe.layer_removal import skip_layers
from layerwise_core import find_decoder

__all__ = [
    "SweepResult",
    "contiguous_block_removals",
    "contiguous_block_sweep",
    "lowest_influence_removals",
    "lowest_influence_sweep",
    "single_layer_removals",
    "single_layer_sweep",
    "sweep",
]

ScoreFn = Callable[[nn.Module], float]


@dataclass
class SweepResult:
    """Scores of every removal candidate under every scorer, and of the full model (`baseline`)."""

    kind: str
    num_layers: int
    removals: list[tuple[int, ...]]
    scores: dict[str, list[float]]
    baseline: dict[str, float]
    protocols: dict[str, str] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    def delta(self, name: str) -> list[float]:
        """dP = P(removed) - P(full model) for scorer `name`."""
        return [s - self.baseline[name] for s in self.scores[name]]

    def relative(self, name: str) -> list[float]:
        """Score as a fraction of the full model's: accuracy retained, or perplexity ratio."""
        base = self.baseline[name]
        return [s / base if base else math.nan for s in self.scores[name]]

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "num_layers": self.num_layers,
            "removals": [list(r) for r in self.removals],
            "baseline": self.baseline,
            "scores": self.scores,
            "protocols": self.protocols,
            "higher_is_better": self.higher_is_better,
        }

    def table(self) -> str:
        """Markdown: one row per removal, one column per scorer (score and change)."""
        names = list(self.scores)
        header = "| removed | " + " | ".join(f"{n} ({self.protocols.get(n, '?')})" for n in names)
        lines = [header + " |", "|---|" + "---|" * len(names)]
        lines.append("| none | " + " | ".join(f"{self.baseline[n]:.4g}" for n in names) + " |")
        for i, removal in enumerate(self.removals):
            cells = [f"{self.scores[n][i]:.4g} ({self.delta(n)[i]:+.3g})" for n in names]
            lines.append(f"| {', '.join(map(str, removal))} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _named(scorers: Mapping[str, ScoreFn] | Sequence[ScoreFn] | ScoreFn) -> dict[str, ScoreFn]:
    if callable(scorers) and not isinstance(scorers, Mapping):
        scorers = [scorers]
    if isinstance(scorers, Mapping):
        return dict(scorers)
    named: dict[str, ScoreFn] = {}
    for scorer in scorers:
        name = getattr(scorer, "name", None) or getattr(scorer, "__name__", "score")
        if name in named:
            raise ValueError(f"sweep: two scorers are named {name!r}; pass a dict of names")
        named[name] = scorer
    return named


def single_layer_removals(num_layers: int) -> list[tuple[int, ...]]:
    return [(i,) for i in range(num_layers)]


def contiguous_block_removals(num_layers: int, n: int) -> list[tuple[int, ...]]:
    if not 1 <= n < num_layers:
        raise ValueError(f"contiguous blocks of n={n} need 1 <= n < {num_layers} layers")
    return [tuple(range(start, start + n)) for start in range(num_layers - n + 1)]


def lowest_influence_removals(
    influence: torch.Tensor | Sequence[float], ns: Sequence[int]
) -> list[tuple[int, ...]]:
    return [tuple(lowest_influence_layers(influence, n)) for n in ns]


@torch.no_grad()
def sweep(
    model: nn.Module,
    scorers: Mapping[str, ScoreFn] | Sequence[ScoreFn] | ScoreFn,
    removals: Sequence[Sequence[int]],
    *,
    kind: str = "custom",
    baseline: Mapping[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Score the full model, then the model with each set of blocks in `removals` skipped.

    `scorers`: callables `model -> float` (e.g. `PerplexityScorer`, `ExactMatchScorer`), a list of
    them (named by their `.name`) or a dict name -> callable. The model is restored after each
    candidate; it is never copied. `baseline` (name -> score of the full model, e.g. from an
    earlier sweep) skips re-scoring the full model.
    """
    named = _named(scorers)
    num_layers = len(find_decoder(model))
    was_training = model.training
    model.eval()
    try:
        full = {name: float(v) for name, v in (baseline or {}).items() if name in named}
        for name, fn in named.items():
            if name not in full:
                full[name] = float(fn(model))
        scores: dict[str, list[float]] = {name: [] for name in named}
        for removal in removals:
            with skip_layers(model, removal):
                for name, fn in named.items():
                    scores[name].append(float(fn(model)))
            if progress is not None:
                progress(
                    f"removed {list(removal)}: "
                    + ", ".join(f"{n}={scores[n][-1]:.4g}" for n in named)
                )
    finally:
        model.train(was_training)
    return SweepResult(
        kind=kind,
        num_layers=num_layers,
        removals=[tuple(int(i) for i in r) for r in removals],
        scores=scores,
        baseline=full,
        protocols={n: getattr(fn, "protocol", "?") for n, fn in named.items()},
        higher_is_better={
            n: bool(getattr(fn, "higher_is_better", True)) for n, fn in named.items()
        },
    )


def single_layer_sweep(model: nn.Module, scorers, **kwargs) -> SweepResult:
    """Each block removed alone: L candidates."""
    num = len(find_decoder(model))
    return sweep(model, scorers, single_layer_removals(num), kind="single_layer", **kwargs)


def contiguous_block_sweep(model: nn.Module, scorers, n: int, **kwargs) -> SweepResult:
    """Every contiguous block of n layers removed: L - n + 1 candidates."""
    num = len(find_decoder(model))
    return sweep(
        model, scorers, contiguous_block_removals(num, n), kind=f"contiguous_{n}", **kwargs
    )


def lowest_influence_sweep(
    model: nn.Module,
    scorers,
    influence: torch.Tensor | Sequence[float],
    ns: Sequence[int],
    **kwargs,
) -> SweepResult:
    """The n lowest-Block-Influence layers removed, for each n in `ns` (ShortGPT)."""
    return sweep(
        model, scorers, lowest_influence_removals(influence, ns), kind="lowest_influence", **kwargs
    )
