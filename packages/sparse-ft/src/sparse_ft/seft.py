"""SEFT: Xiao et al., "Leave it to the Specialist: Repair Sparse LLMs with Sparse Fine-Tuning via
Sparsity Evolution" (arXiv 2505.24037). The official code is not public; this is an open
implementation from the paper's description, with SpIEL's drop/grow mechanics (Ansell et al.,
arXiv 2401.16405).

Start from a pruned model (Wanda / SparseGPT, unstructured or N:M); train a sparse delta of k
entries per matrix on unpruned positions. Every `update_interval` optimizer steps:

    drop:     the n = drop_fraction * k active entries with the smallest |delta|
    grow:     the n positions outside the support with the largest |dL/dW| (accumulated over the
              step's micro-batches); pruned positions may be reactivated (unstructured only: with
              N:M, growth stays inside the current pattern)
    re-prune: once the grown entries have taken one optimizer step, zero the entries of lowest
              sensitivity s_i = |theta_i * dL/dtheta_i| until every matrix is back to its zero count

Dropped deltas are folded into the weight; grown entries start at zero with Adam moments seeded
from the accumulated gradient (SpIEL); pruned support entries are replaced by the unpruned
positions of largest gradient. The target sparsity therefore holds after every optimizer step.
Dense gradients are formed only on update steps, one layer at a time, inside the backward; the
controller keeps O(k) candidates (positions and gradients) per matrix. The index-level drop / grow
step is the dynamic-sparse-training engine's (`sparse_ft.dst.drop_and_grow`, shared with
NeuroTrails).
"""

from __future__ import annotations

import torch

from sparse_ft.config import SeftConfig
from sparse_ft.dst import drop_and_grow
from sparse_ft.sparse_delta import SparseDeltaLinear

__all__ = [
    "SeftConfig",
    "drop_and_grow",
    "seft_budget",
    "sensitivity",
]


def seft_budget(shape: torch.Size | tuple[int, int], unpruned: int, budget_rank: int) -> int:
    """k = min((m + n) * budget_rank, number of unpruned entries)."""
    return min((int(shape[0]) + int(shape[1])) * budget_rank, unpruned)


def sensitivity(theta: torch.Tensor, grad: torch.Tensor, kind: str = "sensitivity") -> torch.Tensor:
    """s_i = |theta_i * grad_i| (SEFT's re-pruning score), or |theta_i| for kind="magnitude"."""
    if kind == "magnitude":
        return theta.abs()
    return (theta * grad).abs()


def _positions_outside(
    module: SparseDeltaLinear, exclude_pruned: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat W_eff, bool mask of positions eligible to join the support)."""
    theta = module.effective_weight().reshape(-1)
    eligible = torch.ones(theta.numel(), dtype=torch.bool, device=theta.device)
    eligible[module.indices] = False
    if exclude_pruned:
        eligible &= theta != 0
    return theta, eligible


class GrowCollector:
    """Backward-time observer: top growth candidates by |dL/dW| outside the support, O(k) memory.

    The first micro-batch fixes the candidate set (largest |g|); later micro-batches add their
    gradient at those positions.
    """

    def __init__(self, module: SparseDeltaLinear, n_candidates: int, exclude_pruned: bool):
        self.module = module
        self.n_candidates = n_candidates
        self.exclude_pruned = exclude_pruned
        self.positions: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, dense_grad: torch.Tensor) -> None:
        flat = dense_grad.reshape(-1)
        if self.positions is None:
            _, eligible = _positions_outside(self.module, self.exclude_pruned)
            score = torch.where(eligible, flat.abs(), torch.full_like(flat, -1.0))
            count = min(self.n_candidates, int(eligible.sum()))
            self.positions = torch.topk(score, count).indices
            self.grad = flat[self.positions].clone()
        else:
            self.grad += flat[self.positions]


class PruneCollector:
    """Backward-time observer for re-pruning, O(k) memory: the gradient at the support, the
    `n_prune` unpruned non-support positions of lowest sensitivity, and the `n_refill` of largest
    |gradient| (replacements for support entries that get pruned)."""

    def __init__(self, module: SparseDeltaLinear, n_prune: int, kind: str):
        self.module = module
        self.n_prune = n_prune
        self.kind = kind
        self.support_grad: torch.Tensor | None = None
        self.low: torch.Tensor | None = None
        self.low_grad: torch.Tensor | None = None
        self.refill: torch.Tensor | None = None
        self.refill_grad: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(self, dense_grad: torch.Tensor) -> None:
        flat = dense_grad.reshape(-1)
        if self.support_grad is None:
            theta, eligible = _positions_outside(self.module, exclude_pruned=True)
            count = min(self.n_prune, int(eligible.sum()))
            inf = torch.full_like(flat, float("inf"))
            score = torch.where(eligible, sensitivity(theta.to(flat.dtype), flat, self.kind), inf)
            self.low = torch.topk(score, count, largest=False).indices
            grow = torch.where(eligible, flat.abs(), torch.full_like(flat, -1.0))
            self.refill = torch.topk(grow, min(2 * self.n_prune, int(eligible.sum()))).indices
            self.support_grad = flat[self.module.indices].clone()
            self.low_grad = flat[self.low].clone()
            self.refill_grad = flat[self.refill].clone()
        else:
            self.support_grad += flat[self.module.indices]
            self.low_grad += flat[self.low]
            self.refill_grad += flat[self.refill]


def _adam_seed(
    optimizer, values: torch.nn.Parameter, positions: torch.Tensor, grad: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
    """Seed Adam's moments of arriving entries as one step of Adam on `grad` would have set them
    (SpIEL: m = (1 - b1) g, v = (1 - b2) g^2); None for optimizers without Adam moments."""
    if optimizer is None:
        return None
    inner = optimizer
    while hasattr(inner, "optimizer") and isinstance(inner.optimizer, torch.optim.Optimizer):
        inner = inner.optimizer
    for group in inner.param_groups:
        if any(p is values for p in group["params"]) and "betas" in group:
            beta1, beta2 = group["betas"]
            return {
                "exp_avg": (positions, (1 - beta1) * grad),
                "exp_avg_sq": (positions, (1 - beta2) * grad * grad),
            }
    return None


@torch.no_grad()
def apply_growth(
    module: SparseDeltaLinear, collector: GrowCollector, drop_fraction: float, optimizer
) -> tuple[int, int]:
    """Drop / grow on one matrix; returns (entries grown, how many of them were pruned weights)."""
    n = max(1, int(drop_fraction * module.k))
    assert collector.positions is not None and collector.grad is not None
    new, chosen = drop_and_grow(
        module.indices, module.values.detach(), collector.positions, collector.grad.abs(), n
    )
    grown, grad = collector.positions[chosen], collector.grad[chosen]
    reactivated = int((module.base_layer.weight.detach().reshape(-1)[grown] == 0).sum())
    order = torch.argsort(grown)
    seed = _adam_seed(optimizer, module.values, torch.searchsorted(new, grown[order]), grad[order])
    module.set_support(new, optimizer, seed)
    return int(grown.numel()), reactivated


@torch.no_grad()
def apply_reprune(
    module: SparseDeltaLinear, collector: PruneCollector, min_zeros: int, optimizer
) -> int:
    """Zero the lowest-sensitivity entries until W_eff has >= `min_zeros` zeros; returns how many."""
    theta = module.effective_weight().reshape(-1)
    excess = int((theta != 0).sum()) - (theta.numel() - min_zeros)
    if excess <= 0:
        return 0
    assert collector.support_grad is not None and collector.low is not None
    support = module.indices
    theta_s = theta[support].to(collector.support_grad.dtype)
    score_s = sensitivity(theta_s, collector.support_grad, collector.kind)
    score_s = torch.where(theta_s != 0, score_s, torch.full_like(score_s, float("inf")))
    score_l = sensitivity(
        theta[collector.low].to(collector.low_grad.dtype), collector.low_grad, collector.kind
    )
    pool = torch.cat([support, collector.low])
    scores = torch.cat([score_s, score_l])
    chosen = pool[torch.topk(scores, min(excess, pool.numel()), largest=False).indices]
    pruned_support = torch.isin(support, chosen)
    if pruned_support.any():
        refill_ok = ~torch.isin(collector.refill, chosen)
        refill = collector.refill[refill_ok][: int(pruned_support.sum())]
        refill_grad = collector.refill_grad[refill_ok][: refill.numel()]
        new = torch.sort(torch.cat([support[~pruned_support], refill])).values
        order = torch.argsort(refill)
        positions = torch.searchsorted(new, refill[order])
        seed = _adam_seed(optimizer, module.values, positions, refill_grad[order])
        module.set_support(new, optimizer, seed)
    module.zero_base(chosen)
    return int(chosen.numel())
