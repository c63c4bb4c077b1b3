"""coe-moe: Chain-of-Experts (Wang et al., arXiv 2506.18945) as a Hugging Face model, and a standard
top-k MoE from the same code (num_iterations=1).

    z_{t+1} = z_t + sum_{i in TopK(softmax(W_t z_t))} p_{t,i} E_i(z_t) + Shared(z_t),  t < C

    config = coe_moe.CoEConfig(hidden_size=256, num_experts=64, top_k=4, num_iterations=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
"""

from typing import TYPE_CHECKING

from coe_moe.__about__ import __version__
from coe_moe.config import CoEMLPConfig, MoEMLPConfig
from coe_moe.configuration_coe import EXPERT_BACKENDS, CoEConfig  # registers model type "coe"
from coe_moe.routing import (
    CoERouter,
    RoutingStats,
    load_balancing_loss,
    router_z_loss,
    routing_stats,
    top_k_routing,
)

if TYPE_CHECKING:
    from coe_moe.chain_of_experts import CoEExperts, CoELayer, SharedExpert, experts_forward
    from coe_moe.modeling_coe import (
        CoEDecoderLayer,
        CoEForCausalLM,
        CoEModel,
        CoEPreTrainedModel,
    )

# Imported on first use: they need transformers' modeling code, which takes seconds to import.
# The model classes are registered with AutoModel / AutoModelForCausalLM when a CoEConfig is made
# (every Auto route makes one first; `configuration_coe`).
_LAZY = {
    "CoEExperts": "coe_moe.chain_of_experts",
    "CoELayer": "coe_moe.chain_of_experts",
    "SharedExpert": "coe_moe.chain_of_experts",
    "experts_forward": "coe_moe.chain_of_experts",
    "CoEDecoderLayer": "coe_moe.modeling_coe",
    "CoEForCausalLM": "coe_moe.modeling_coe",
    "CoEModel": "coe_moe.modeling_coe",
    "CoEPreTrainedModel": "coe_moe.modeling_coe",
}

__all__ = [
    "EXPERT_BACKENDS",
    "CoEConfig",
    "CoEDecoderLayer",
    "CoEExperts",
    "CoEForCausalLM",
    "CoELayer",
    "CoEMLPConfig",
    "CoEModel",
    "CoEPreTrainedModel",
    "CoERouter",
    "MoEMLPConfig",
    "RoutingStats",
    "SharedExpert",
    "__version__",
    "experts_forward",
    "load_balancing_loss",
    "router_z_loss",
    "routing_stats",
    "top_k_routing",
]

# coe_moe.dispatch's backend choice moved to layerwise_kernels (one dispatcher for every package)
_MOVED = {
    "native_grouped_mm_supports": "native_grouped_mm_supports",
    "resolve_expert_backend": "resolve_grouped_mm_backend",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED:
        import layerwise_kernels
        from layerwise_core import warn_renamed

        warn_renamed("coe_moe", name, f"layerwise_kernels.{_MOVED[name]}", kind="function")
        return getattr(layerwise_kernels, _MOVED[name])
    raise AttributeError(f"module 'coe_moe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
