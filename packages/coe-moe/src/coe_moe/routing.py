"""Routers of a Chain-of-Experts layer: top-k selection, load-balancing loss, routing statistics.

Each iteration t of a CoE layer (Wang et al., arXiv 2506.18945) has its own router W_t:

    p_t = softmax(W_t z_t),   S_t = TopK(p_t, K),   weights p_{t,i} for i in S_t

greedy top-k, the weights not renormalised (DeepSeek-V2's `norm_topk_prob=False`, routed scaling 1).
Router logits are computed in fp32 at least, as in the reference implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CoERouter",
    "RoutingStats",
    "load_balancing_loss",
    "router_z_loss",
    "routing_stats",
    "top_k_routing",
]


def _router_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 for half inputs (as the reference does); fp64 stays fp64 for exactness tests.
    return torch.promote_types(dtype, torch.float32)


def top_k_routing(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, experts) of greedy top-k routing: p = softmax(logits), S = TopK(p, K), w = p_S.

    Args:
        logits: [tokens, num_experts] router logits.
        top_k: K.

    Returns:
        weights [tokens, K] (the selected probabilities, not renormalised, in the logits' dtype)
        and experts [tokens, K] (int64 indices), both in descending order of probability.
    """
    probs = logits.softmax(dim=-1)
    return probs.topk(top_k, dim=-1)


class CoERouter(nn.Module):
    """One iteration's router: logits = z W^T (no bias); selection by `top_k_routing`."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [tokens, hidden] -> (logits [tokens, E], weights [tokens, K], experts [tokens, K])."""
        dtype = _router_dtype(z.dtype)
        logits = F.linear(z.to(dtype), self.weight.to(dtype))
        weights, experts = top_k_routing(logits, self.top_k)
        return logits, weights, experts

    def extra_repr(self) -> str:
        return f"hidden_size={self.weight.shape[1]}, num_experts={self.weight.shape[0]}, top_k={self.top_k}"


def load_balancing_loss(router_logits: torch.Tensor, top_k: int, batch_size: int) -> torch.Tensor:
    """Sequence-level load-balancing loss of one router (DeepSeek-V2's `seq_aux`), without alpha.

    For each sequence b of T tokens, with E experts and K selected per token:

        f_{b,i} = E / (K T) * #{(t, k) : expert k of token t is i}
        P_{b,i} = (1 / T) * sum_t p_{b,t,i}
        L       = mean_b sum_i f_{b,i} P_{b,i}

    L = 1 when both the selections and the probabilities are uniform; the model multiplies it by
    `aux_loss_coef` (alpha = 0.001 in the paper) and sums it over layers and iterations. Every
    position counts, padding included, as in the reference implementation.

    Args:
        router_logits: [batch_size * T, E] logits of one router call, sequence-major.
        top_k: K of that router.
        batch_size: number of sequences B in the flattened logits.
    """
    tokens, num_experts = router_logits.shape
    if tokens % batch_size:
        raise ValueError(
            f"router_logits has {tokens} rows, not a multiple of batch_size {batch_size}: pass "
            "the batch size of the forward pass that produced them"
        )
    probs = router_logits.softmax(dim=-1).view(batch_size, -1, num_experts)
    seq_len = probs.shape[1]
    experts = probs.topk(top_k, dim=-1).indices.view(batch_size, -1)
    counts = torch.zeros(batch_size, num_experts, dtype=probs.dtype, device=probs.device)
    counts.scatter_add_(1, experts, torch.ones_like(experts, dtype=probs.dtype))
    fraction = counts * (num_experts / (top_k * seq_len))
    return (fraction * probs.mean(dim=1)).sum(dim=1).mean()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """Router z-loss of one router call (ST-MoE, Zoph et al. 2022, eq. 5; OLMoE), without its
    coefficient: the mean over tokens of the squared log-partition of the logits,

        L_z = (1 / N) sum_n (log sum_i exp(x_{n,i}))^2

    which keeps router logits small (computed in fp32 at least). The model multiplies it by
    `router_z_loss_coef` (0.001 in OLMoE / the sparsity-depth recipe) and sums it over layers and
    iterations.

    Args:
        router_logits: [tokens, E] logits of one router call.
    """
    logits = router_logits.to(_router_dtype(router_logits.dtype))
    return torch.logsumexp(logits, dim=-1).square().mean()


@dataclass
class RoutingStats:
    """Routing of one CoE layer over a set of tokens, per iteration t (C iterations, E experts).

    load: [C, E] fraction of the K selections of iteration t that go to expert i (rows sum to 1).
    entropy: [C] mean over tokens of the router entropy -sum_i p_i log p_i, in nats (max log E).
    overlap: [C, C] mean over tokens of |S_t & S_u| / K (1 on the diagonal).
    changed: [C, C] fraction of tokens whose expert set S_t differs from S_u (0 on the diagonal):
        how often a token picks different experts in different iterations.
    distinct_sets: number of different expert sets (as sets, iterations in order) over the tokens,
        i.e. how many distinct expert combinations the chain produces.
    """

    load: torch.Tensor
    entropy: torch.Tensor
    overlap: torch.Tensor
    changed: torch.Tensor
    distinct_sets: int

    @property
    def max_entropy(self) -> float:
        return math.log(self.load.shape[1])


@torch.no_grad()
def routing_stats(
    router_logits: Sequence[torch.Tensor], top_k: int, mask: torch.Tensor | None = None
) -> RoutingStats:
    """Expert load, router entropy and cross-iteration diversity of one layer's C router calls.

    Args:
        router_logits: C tensors [tokens, E], the logits of iterations 0 .. C-1 of one layer (as
            returned by `CoELayer(..., output_router_logits=True)` or every C consecutive entries of
            `CoEForCausalLM(..., output_router_logits=True).router_logits`).
        top_k: K of the layer.
        mask: optional [tokens] (or [batch, seq], flattened) bool, True for tokens to count.
    """
    if len(router_logits) == 0:
        raise ValueError("routing_stats needs the router logits of at least one iteration")
    logits = torch.stack([t.detach().float() for t in router_logits])  # [C, N, E]
    if mask is not None:
        logits = logits[:, mask.reshape(-1).to(torch.bool)]
    probs = logits.softmax(dim=-1)
    experts = probs.topk(top_k, dim=-1).indices  # [C, N, K]
    chosen = torch.zeros_like(probs).scatter_(-1, experts, 1.0)  # [C, N, E] set indicators
    load = chosen.sum(1) / chosen.sum((1, 2)).clamp_min(1.0)[:, None]
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean(-1)
    shared = torch.einsum("tne,une->tun", chosen, chosen)  # [C, C, N] |S_t & S_u|
    overlap = shared.mean(-1) / top_k
    changed = (shared < top_k).float().mean(-1)
    combos = chosen.permute(1, 0, 2).reshape(chosen.shape[1], -1)
    distinct = int(torch.unique(combos, dim=0).shape[0]) if combos.shape[0] else 0
    return RoutingStats(load, entropy, overlap, changed, distinct)
