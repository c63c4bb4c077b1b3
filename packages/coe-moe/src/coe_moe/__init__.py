"""coe-moe: Chain-of-Experts (Wang et al., arXiv 2506.18945) as a Hugging Face model, and a standard
top-k MoE from the same code (num_iterations=1).

    z_{t+1} = z_t + sum_{i in TopK(softmax(W_t z_t))} p_{t,i} E_i(z_t) + Shared(z_t),  t < C

    config = coe_moe.CoEConfig(hidden_size=256, num_experts=64, top_k=4, num_iterations=2)
    model = transformers.AutoModelForCausalLM.from_config(config)
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from coe_moe.__about__ import __version__
from coe_moe.chain_of_experts import CoEExperts, CoELayer, SharedExpert
from coe_moe.configuration_coe import EXPERT_BACKENDS, CoEConfig
from coe_moe.dispatch import experts_forward, native_grouped_mm_supports, resolve_expert_backend
from coe_moe.modeling_coe import CoEDecoderLayer, CoEForCausalLM, CoEModel, CoEPreTrainedModel
from coe_moe.routing import (
    CoERouter,
    RoutingStats,
    load_balancing_loss,
    routing_stats,
    top_k_routing,
)

AutoConfig.register(CoEConfig.model_type, CoEConfig, exist_ok=True)
AutoModel.register(CoEConfig, CoEModel, exist_ok=True)
AutoModelForCausalLM.register(CoEConfig, CoEForCausalLM, exist_ok=True)

__all__ = [
    "EXPERT_BACKENDS",
    "CoEConfig",
    "CoEDecoderLayer",
    "CoEExperts",
    "CoEForCausalLM",
    "CoELayer",
    "CoEModel",
    "CoEPreTrainedModel",
    "CoERouter",
    "RoutingStats",
    "SharedExpert",
    "__version__",
    "experts_forward",
    "load_balancing_loss",
    "native_grouped_mm_supports",
    "resolve_expert_backend",
    "routing_stats",
    "top_k_routing",
]
