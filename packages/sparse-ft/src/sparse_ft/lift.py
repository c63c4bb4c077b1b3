"""LIFT: Low-rank Informed Sparse Fine-Tuning (Liu et al., ICML 2025, arXiv 2506.00772).

Every nn.Linear of the decoder blocks (q, k, v, o, gate, up, down; never lm_head) gets a sparse
delta on its k = min((m + n) * lora_rank, m * n) Principal Weights (`principal_weight_mask`):

    W' = U_r S_r V_r^T  (r = filter_rank),   M = top-k |W'|,   W <- W - lr * Adam(dL/dW)[M]

and every `update_interval` optimizer steps the mask is recomputed from the current weights:
entries in both masks keep their value and Adam moments, new entries start at zero, dropped deltas
are folded into the frozen weight. Embeddings, norms, biases and lm_head stay frozen.
"""

from __future__ import annotations

import torch

from sparse_ft.config import LiftConfig
from sparse_ft.principal_weight_mask import lift_budget, principal_weight_indices
from sparse_ft.sparse_delta import SparseDeltaLinear

__all__ = ["LiftConfig", "lift_initial_indices", "lift_refresh", "lift_refresh_due"]


def lift_initial_indices(weight: torch.Tensor, config: LiftConfig) -> torch.Tensor:
    """Sorted flat indices of the k Principal Weights of `weight` under `config`."""
    return principal_weight_indices(
        weight,
        config.filter_rank,
        lift_budget(weight.shape, config.lora_rank),
        largest=config.select_largest,
        method=config.svd,
        niter=config.niter,
    )


def lift_refresh_due(step: int, config: LiftConfig) -> bool:
    """Is the mask recomputed after optimizer step `step` (1-based count of completed steps)?

    Paper: after every `update_interval` steps (step % N == 0). Official code (`reference_quirks`):
    `(total_step + 1) % update_proj_gap == 0`, i.e. first after N - 1 steps, then every N.
    """
    n = config.update_interval
    if n is None or step < 1:
        return False
    return (step + 1) % n == 0 if config.reference_quirks else step % n == 0


@torch.no_grad()
def lift_refresh(
    module: SparseDeltaLinear,
    config: LiftConfig,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, int]:
    """Recompute the Principal Weights of the current W_eff and move the support there.

    Returns the counts of kept / arrived / left entries (`SparseDeltaLinear.set_support`).
    """
    new = lift_initial_indices(module.effective_weight(), config)
    return module.set_support(new, optimizer)
