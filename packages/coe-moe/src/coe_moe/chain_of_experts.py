"""The Chain-of-Experts layer: experts applied C times in sequence, re-routed at every iteration.

Wang et al., "Chain-of-Experts: Unlocking the Communication Power of MoEs"
(arXiv 2506.18945), section 3. With z_0 the layer input (in the decoder, RMSNorm_post(h)):

    p_t     = softmax(W_t z_t)                                  a separate router per iteration
    z_{t+1} = z_t + sum_{i in TopK(p_t, K)} p_{t,i} E_i(z_t) + Shared(z_t)    for t = 0 .. C-1
    output  = z_C

The routed experts E_i and the shared expert are the same modules in every iteration: C = 2 with
K = 4 makes 8 routed expert calls per token, like a top-8 MoE (plus a second router and a second
shared-expert call). C = 1 is a standard top-K MoE with a shared expert (+ z_0 when
inner_residual). Without `inner_residual` the update replaces z_t: z_{t+1} = sum(...) + Shared(z_t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from coe_moe.configuration_coe import CoEConfig, check_moe_arguments
from coe_moe.routing import CoERouter
from layerwise_kernels import grouped_mm, resolve_grouped_mm_backend

__all__ = ["CoEExperts", "CoELayer", "SharedExpert", "experts_forward"]


def experts_forward(
    x: torch.Tensor,
    weights: torch.Tensor,
    experts: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn: Callable[[torch.Tensor], torch.Tensor] = F.silu,
    backend: str = "auto",
) -> torch.Tensor:
    """Weighted sum of each token's K routed SwiGLU experts, by sorting tokens by expert.

        y_n = sum_k weights[n, k] * W^down_e (act(W^gate_e x_n) * (W^up_e x_n)),  e = experts[n, k]

    The N*K (token, expert) pairs are sorted by expert (a stable argsort) and the token copies
    gathered in that order; each projection of all experts is then one grouped matmul over the
    sorted rows (`layerwise_kernels.grouped_mm`, groups = experts); the outputs go back to pair
    order, are weighted and summed over each token's K pairs (a reshape and a sum: deterministic,
    unlike index_add on a GPU). No token is dropped (no capacity factor).

    Args:
        x: [tokens, hidden].
        weights: [tokens, K] routing weights (any float dtype; the weighted sum runs in the wider
            of it and x's dtype, then is cast to x's dtype).
        experts: [tokens, K] int64 expert indices.
        gate_up_proj: [E, 2 * I, hidden], gate rows first then up rows (transformers' fused MoE
            layout).
        down_proj: [E, hidden, I].
        act_fn: activation of the gate (SiLU for SwiGLU).
        backend: the grouped matmul's, one of `layerwise_kernels.GROUPED_MM_BACKENDS`; "auto"
            picks one implementation that runs both projections
            (`layerwise_kernels.resolve_grouped_mm_backend`).

    Returns:
        [tokens, hidden] in x's dtype.
    """
    tokens, top_k = experts.shape
    num_experts = gate_up_proj.shape[0]
    flat = experts.reshape(-1)  # pair p = n * K + k
    order = torch.argsort(flat, stable=True)  # pairs sorted by expert
    offsets = torch.bincount(flat, minlength=num_experts).cumsum(0)
    rows = x.index_select(0, order // top_k)  # token copies sorted by expert
    # [experts, in, out] views of the nn.Linear-layout weights, without a copy
    gate_up_t, down_t = gate_up_proj.transpose(1, 2), down_proj.transpose(1, 2)
    chosen = resolve_grouped_mm_backend(backend, rows, gate_up_t, down_t)
    gate, up = grouped_mm(rows, gate_up_t, offsets, backend=chosen).chunk(2, dim=-1)
    out_sorted = grouped_mm(act_fn(gate) * up, down_t, offsets, backend=chosen)
    out_pairs = torch.empty_like(out_sorted).index_copy(0, order, out_sorted)  # pair order
    acc_dtype = torch.promote_types(x.dtype, weights.dtype)
    mixed = out_pairs.view(tokens, top_k, -1).to(acc_dtype) * weights.to(acc_dtype).unsqueeze(-1)
    return mixed.sum(dim=1).to(x.dtype)


class CoEExperts(nn.Module):
    """E routed SwiGLU experts, E_i(x) = W^down_i (act(W^gate_i x) * (W^up_i x)).

    Weights are fused 3-D tensors in transformers' MoE layout: `gate_up_proj` [E, 2I, hidden]
    (gate rows, then up rows) and `down_proj` [E, hidden, I]. Tokens are dispatched by sorting
    (`experts_forward`); `backend` picks the grouped matmul (`layerwise_kernels.grouped_mm`).
    """

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "silu",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(
            torch.empty(num_experts, 2 * intermediate_size, hidden_size)
        )
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        nn.init.normal_(self.gate_up_proj, std=0.02)
        nn.init.normal_(self.down_proj, std=0.02)
        self.act_fn = ACT2FN[hidden_act]
        self.backend = backend

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor
    ) -> torch.Tensor:
        """x [tokens, hidden], weights/experts [tokens, K] -> sum_k weights * E_experts(x)."""
        return experts_forward(
            x, weights, experts, self.gate_up_proj, self.down_proj, self.act_fn, self.backend
        )

    def extra_repr(self) -> str:
        n, two_i, h = self.gate_up_proj.shape
        return f"num_experts={n}, hidden_size={h}, intermediate_size={two_i // 2}, backend={self.backend!r}"


class SharedExpert(nn.Module):
    """The always-on expert: a Llama SwiGLU MLP, down(act(gate(x)) * up(x)), same parameter names."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu") -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class CoELayer(nn.Module):
    """Chain-of-Experts MLP: C routed iterations over one set of experts (see the module docstring).

    Usable on its own on any [..., hidden] input; `CoEDecoderLayer` uses it as its MLP.

    Args:
        hidden_size: width of the input and output.
        moe_intermediate_size: SwiGLU width I of one routed expert.
        num_experts: routed experts E.
        top_k: experts K selected per token in each iteration.
        num_iterations: C; 1 is a standard top-K MoE.
        num_shared_experts: width multiplier of the shared SwiGLU expert (0: none).
        inner_residual: z_{t+1} = z_t + update (True) or update alone.
        independent_routers: one router per iteration (True) or one router for all.
        hidden_act: expert activation.
        expert_backend: grouped-matmul backend, "auto" | "grouped_mm" | "triton" | "torch".
    """

    def __init__(
        self,
        hidden_size: int,
        moe_intermediate_size: int,
        num_experts: int,
        top_k: int,
        num_iterations: int = 2,
        num_shared_experts: int = 1,
        inner_residual: bool = True,
        independent_routers: bool = True,
        hidden_act: str = "silu",
        expert_backend: str = "auto",
    ) -> None:
        super().__init__()
        check_moe_arguments(
            num_experts=num_experts,
            top_k=top_k,
            num_iterations=num_iterations,
            num_shared_experts=num_shared_experts,
            moe_intermediate_size=moe_intermediate_size,
            expert_backend=expert_backend,
        )
        self.top_k = top_k
        self.num_iterations = num_iterations
        self.inner_residual = inner_residual
        n_routers = num_iterations if independent_routers else 1
        self.routers = nn.ModuleList(
            CoERouter(hidden_size, num_experts, top_k) for _ in range(n_routers)
        )
        self.experts = CoEExperts(
            num_experts, hidden_size, moe_intermediate_size, hidden_act, expert_backend
        )
        self.shared_experts = (
            SharedExpert(hidden_size, num_shared_experts * moe_intermediate_size, hidden_act)
            if num_shared_experts > 0
            else None
        )

    @classmethod
    def from_config(cls, config: CoEConfig) -> CoELayer:
        return cls(
            hidden_size=config.hidden_size,
            moe_intermediate_size=config.moe_intermediate_size,
            num_experts=config.num_experts,
            top_k=config.top_k,
            num_iterations=config.num_iterations,
            num_shared_experts=config.num_shared_experts,
            inner_residual=config.inner_residual,
            independent_routers=config.independent_routers,
            hidden_act=config.hidden_act,
            expert_backend=config.expert_backend,
        )

    def forward(
        self, hidden_states: torch.Tensor, output_router_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """z_0 = hidden_states; C iterations of routed + shared experts; returns z_C.

        With `output_router_logits=True` also returns the C router logits, each [tokens, E] with
        the leading dims of hidden_states flattened (input to `load_balancing_loss` and
        `routing_stats`).
        """
        shape = hidden_states.shape
        z = hidden_states.reshape(-1, shape[-1])
        router_logits = []
        for t in range(self.num_iterations):
            logits, weights, experts = self.routers[t % len(self.routers)](z)
            update = self.experts(z, weights, experts)
            if self.shared_experts is not None:
                update = update + self.shared_experts(z)
            z = z + update if self.inner_residual else update
            router_logits.append(logits)
        out = z.view(shape)
        return (out, tuple(router_logits)) if output_router_logits else out
