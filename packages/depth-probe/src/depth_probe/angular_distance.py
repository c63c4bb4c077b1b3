"""Angular distance between layers (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
Layers", arXiv 2403.17887)::

    d(h_l, h_{l+n}) = arccos( h_l,T . h_{l+n},T / (||h_l,T|| ||h_{l+n},T||) ) / pi

on the LAST token T of each sequence, averaged over sequences. To prune n layers, remove the
contiguous block l*, ..., l*+n-1 with l* = argmin_l d(h_l, h_{l+n}).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from depth_probe.capture import DepthCapture, as_capture
from layerwise_core import TokenInputs

__all__ = ["AngularDistances", "angular_distance"]


@dataclass
class AngularDistances:
    """`matrix[n - 1, l]` = d(h_l, h_{l+n}) for block sizes n = 1..L; NaN where l + n > L."""

    matrix: torch.Tensor  # [L, L] float32

    @property
    def num_layers(self) -> int:
        return self.matrix.shape[0]

    def best_block(self, n: int) -> tuple[int, float]:
        """(l*, d): the start of the contiguous block of n layers whose removal changes the last
        token's representation least, and its angular distance."""
        if not 1 <= n <= self.num_layers:
            raise ValueError(f"best_block: n={n} must be in [1, {self.num_layers}]")
        row = self.matrix[n - 1, : self.num_layers - n + 1]
        start = int(torch.argmin(row))
        return start, float(row[start])

    def best_blocks(self) -> dict[int, tuple[int, float]]:
        """{n: (l*, d)} for every block size n."""
        return {n: self.best_block(n) for n in range(1, self.num_layers + 1)}

    def as_dict(self) -> dict:
        return {
            "matrix": [[None if math.isnan(v) else v for v in row] for row in self.matrix.tolist()],
            "best_blocks": {
                str(n): {"start": s, "layers": list(range(s, s + n)), "distance": d}
                for n, (s, d) in self.best_blocks().items()
            },
        }


def angular_distance(
    source: nn.Module | DepthCapture,
    input_ids: TokenInputs | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    zero_channels: Sequence[int] | None = None,
) -> AngularDistances:
    """d(h_l, h_{l+n}) on each sequence's last real token, averaged over the batch, for every l, n.

    h_L is the last block's output before the final norm. Use `.best_block(n)` for Gromov's choice.
    """
    capture = as_capture(source, input_ids, attention_mask, what="angular_distance")
    capture = capture.zero_channels(zero_channels)
    last = capture.last_positions()
    rows = torch.arange(last.shape[0], device=last.device)
    hidden = torch.stack([h[rows, last.to(h.device)].float() for h in capture.hidden_states])
    num = hidden.shape[0] - 1  # L blocks, L + 1 hidden states
    unit = F.normalize(hidden.double(), dim=-1)  # [L+1, batch, hidden]
    dist = torch.empty(num + 1, num + 1, dtype=torch.float64)
    for i in range(num + 1):
        # arccos(u.v) of unit vectors as 2 atan2(|u - v|, |u + v|): exact at 0, stable near it
        angle = 2 * torch.atan2((unit - unit[i]).norm(dim=-1), (unit + unit[i]).norm(dim=-1))
        dist[i] = (angle / math.pi).mean(-1).cpu()
    matrix = torch.full((num, num), float("nan"))
    for n in range(1, num + 1):
        starts = torch.arange(0, num - n + 1)
        matrix[n - 1, : num - n + 1] = dist[starts, starts + n].float()
    return AngularDistances(matrix=matrix)
