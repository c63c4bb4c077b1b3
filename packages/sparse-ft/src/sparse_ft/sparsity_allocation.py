"""How much of each layer to prune for a target average sparsity S over L blocks (l = 0 .. L-1).

    uniform          S_l = S
    deeper_sparser   S_l = S - eps + 2 eps * l / (L - 1)      (first block S - eps, last S + eps)
    earlier_sparser  S_l = S + eps - 2 eps * l / (L - 1)
    owl              S_l from the blocks' outlier ratios (`sparse_ft.owl`)

The linear schedules are those of the diffusion-LM pruning study (Conzel et al., super-outlier-dlm,
`sparsity_strategy.py`: deeper-/earlier-is-sparser around the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from layerwise_core import renamed_kwargs
from sparse_ft.owl import owl_sparsities

__all__ = ["ALLOCATIONS", "Allocation", "layer_sparsities"]

Allocation = Literal["uniform", "owl", "deeper_sparser", "earlier_sparser"]
ALLOCATIONS: tuple[str, ...] = ("uniform", "owl", "deeper_sparser", "earlier_sparser")


@renamed_kwargs(lamda="owl_lambda")
def layer_sparsities(
    allocation: Allocation,
    num_layers: int,
    sparsity: float,
    *,
    epsilon: float = 0.08,
    outlier_ratios: Sequence[float] | None = None,
    owl_lambda: float = 0.08,
) -> list[float]:
    """Sparsity of each of `num_layers` units under `allocation` (equations in the module docstring).

    `outlier_ratios` (one per unit) and `owl_lambda` are for "owl" only.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if allocation == "uniform":
        return [float(sparsity)] * num_layers
    if allocation in ("deeper_sparser", "earlier_sparser"):
        if num_layers == 1:
            return [float(sparsity)]
        sign = 1.0 if allocation == "deeper_sparser" else -1.0
        return [
            sparsity + sign * (-epsilon + 2 * epsilon * layer / (num_layers - 1))
            for layer in range(num_layers)
        ]
    if allocation == "owl":
        if outlier_ratios is None or len(outlier_ratios) != num_layers:
            raise ValueError(
                f"allocation='owl' needs one outlier ratio per unit ({num_layers}); compute them "
                "with sparse_ft.owl_outlier_ratio, or let sparse_ft.prune do it from calibration data"
            )
        return owl_sparsities(outlier_ratios, sparsity, owl_lambda)
    raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
