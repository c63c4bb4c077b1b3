"""What a decoding run cost: forward evaluations, steps against the budget, tokens per second.

Definitions (fair speed reporting, see the README):

- `nfe[b]`: network function evaluations spent on row b. One forward of one sequence is 1;
  classifier-free guidance runs a conditional and an unconditional sequence, so a CFG step is 2.
  A KV-cache refresh (full sequence) and a cached window pass both count 1, although they cost
  different amounts of compute.
- `steps[b]`: denoising iterations of row b (forwards, CFG counted once).
- `step_budget`: the iterations the full schedule would take (the strategy's `steps`).
- `steps_saved[b] = step_budget - steps[b]`, Prophet's metric; `speedup = step_budget / steps`.
- `sequence_evals[b]`: sequences pushed through the network for row b: NFE times the beam width
  (SOAR scores up to `max_beam_size` sequences per step).
- `row_wall_s[b]`: seconds from the start of decoding until row b had no mask left (or was
  finished by an end-of-text stop); a row that never completes gets `wall_s`. In a batch, rows
  share forwards, so this is the latency row b saw, not its cost alone.
- `generated_tokens[b]`: generated tokens before the first EOS/EoT (those excluded), the token
  definition of `tokens_per_second` (whole batch, wall clock of the decoding loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DecodeStats"]


@dataclass
class DecodeStats:
    nfe: torch.Tensor  # (B,) int64
    steps: torch.Tensor  # (B,) int64
    sequence_evals: torch.Tensor  # (B,) int64
    step_budget: int
    generated_tokens: torch.Tensor  # (B,) int64
    forward_calls: int  # calls of the model (a batch of rows is one call)
    wall_s: float
    row_wall_s: torch.Tensor | None = None  # (B,) float64: seconds until row b was complete

    @property
    def steps_saved(self) -> torch.Tensor:
        return self.step_budget - self.steps

    @property
    def speedup(self) -> torch.Tensor:
        """Step reduction relative to the full budget, per row."""
        return self.step_budget / self.steps.clamp(min=1).double()

    @property
    def tokens_per_second(self) -> float:
        return float(self.generated_tokens.sum()) / max(self.wall_s, 1e-12)

    def summary(self) -> dict[str, float]:
        """Batch means, for logs and tables."""
        return {
            "nfe": float(self.nfe.double().mean()),
            "steps": float(self.steps.double().mean()),
            "steps_saved": float(self.steps_saved.double().mean()),
            "speedup": float(self.speedup.mean()),
            "tokens_per_second": self.tokens_per_second,
            "wall_s": self.wall_s,
        }
