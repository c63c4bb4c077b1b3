"""`CoEConfig`: a Llama/Qwen2-style decoder whose every MLP is a Chain-of-Experts layer.

Wang et al., "Chain-of-Experts: Unlocking the Communication Power of MoEs"
(arXiv 2506.18945). Defaults are the paper's headline model with standard multi-head attention in
place of its MLA: hidden 1024, 4 layers, 8 heads, 63 routed experts of width 704 plus 1 shared,
C = 2 iterations with K = 4 experts each (the iso-compute CoE: 8 routed expert calls per token,
like a K = 8 MoE). `num_iterations=1` is a standard top-k MoE built from the same code.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

from layerwise_kernels import GROUPED_MM_BACKENDS

__all__ = ["EXPERT_BACKENDS", "CoEConfig"]

# How the routed experts' grouped matmuls run (`layerwise_kernels.grouped_mm`'s backends): "auto"
# picks the fastest that takes the inputs.
EXPERT_BACKENDS = GROUPED_MM_BACKENDS


@strict
class CoEConfig(PreTrainedConfig):
    r"""Configuration of `CoEModel` / `CoEForCausalLM`.

    Every decoder block is

        h = x + Attn(RMSNorm_in(x))
        z_0 = RMSNorm_post(h)
        z_{t+1} = z_t + sum_{i in TopK(p_t)} p_{t,i} E_i(z_t) + Shared(z_t),  p_t = softmax(W_t z_t)
        out = z_C  (+ h if outer_residual)

    for t = 0 .. C-1, with the routed experts E_i and the shared expert reused in every iteration.

    Args:
        vocab_size: tokens in the vocabulary.
        hidden_size: model width d.
        num_hidden_layers: decoder blocks, each with a CoE layer as its MLP.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (grouped-query attention); None: equal to the heads.
        head_dim: width of one head; None: hidden_size // num_attention_heads.
        moe_intermediate_size: SwiGLU width of one routed expert.
        num_experts: routed experts shared by all iterations of a layer.
        top_k: K, experts selected per token in each iteration (greedy, weights not renormalised).
        num_iterations: C, passes of the chain; 1 is a standard top-k MoE.
        num_shared_experts: always-on experts, run in every iteration as one SwiGLU of width
            num_shared_experts * moe_intermediate_size; 0 for none.
        inner_residual: z_{t+1} = z_t + update (True, the paper) or z_{t+1} = update.
        outer_residual: add the block input h back after the chain (False, the paper: the residual
            stream is replaced by the chain's output, which starts from RMSNorm_post(h)).
        independent_routers: a separate router W_t per iteration (True, the paper) or one router
            reused by every iteration (the paper's "shared gate" ablation).
        aux_loss_coef: alpha of the sequence-level load-balancing loss, summed over layers and
            iterations and added to the LM loss in training mode.
        balance_scope: what the load-balancing loss averages over: "sequence" (f and P per
            sequence, then the mean over sequences: DeepSeek-V2's seq_aux, the paper) or "batch"
            (f and P over all tokens of the batch: the Switch / OLMoE loss).
        router_z_loss_coef: coefficient of the router z-loss (`routing.router_z_loss`, ST-MoE),
            summed over layers and iterations and added to the LM loss in training mode; 0 (the
            CoE paper has none) disables it. OLMoE uses 0.001.
        expert_backend: how the routed experts' grouped matmuls run (`layerwise_kernels.grouped_mm`):
            "auto", "grouped_mm" (torch's grouped GEMM), "triton" (layerwise_kernels' Triton
            grouped GEMM) or "torch" (a loop over experts on sorted tokens); all give the same
            result up to summation order.
        hidden_act: activation of the SwiGLU experts.
        max_position_embeddings: longest sequence RoPE is set up for.
        initializer_range: std of the N(0, std) init of every matrix (attention, experts, routers,
            embeddings).
        rms_norm_eps: epsilon of every RMSNorm.
        use_cache: return a KV cache from the forward pass.
        tie_word_embeddings: share the embedding and output matrices.
        rope_parameters: RoPE settings, as in `LlamaConfig` (default theta 10000).
        attention_bias: biases in the q/k/v/o projections.
        attention_dropout: dropout on attention probabilities.
        output_router_logits: return the router logits of every layer and iteration by default.
    """

    model_type = "coe"
    keys_to_ignore_at_inference: ClassVar[list[str]] = [
        "cache",
        "past_key_values",
    ]  # 5.25 renamed it
    # full causal attention in every layer (MixtralModel's forward, which CoEModel runs, reads it)
    sliding_window = None

    vocab_size: int = 102400
    hidden_size: int = 1024
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    moe_intermediate_size: int = 704
    num_experts: int = 63
    top_k: int = 4
    num_iterations: int = 2
    num_shared_experts: int = 1
    inner_residual: bool = True
    outer_residual: bool = False
    independent_routers: bool = True
    aux_loss_coef: float = 0.001
    balance_scope: str = "sequence"
    router_z_loss_coef: float = 0.0
    expert_backend: str = "auto"
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: float | int = 0.0
    output_router_logits: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                    f"{self.num_attention_heads}: change one of them or pass head_dim"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        check_moe_arguments(
            num_experts=self.num_experts,
            top_k=self.top_k,
            num_iterations=self.num_iterations,
            num_shared_experts=self.num_shared_experts,
            moe_intermediate_size=self.moe_intermediate_size,
            expert_backend=self.expert_backend,
        )
        if self.num_key_value_heads < 1 or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}: pick a divisor"
            )
        if self.aux_loss_coef < 0:
            raise ValueError(
                f"aux_loss_coef must be >= 0 (0 disables it), got {self.aux_loss_coef}"
            )
        if self.balance_scope not in ("sequence", "batch"):
            raise ValueError(
                f"balance_scope must be 'sequence' or 'batch', got {self.balance_scope!r}"
            )
        if self.router_z_loss_coef < 0:
            raise ValueError(
                f"router_z_loss_coef must be >= 0 (0 disables it), got {self.router_z_loss_coef}"
            )
        super().__post_init__(**kwargs)
        register_models()

    def __setstate__(self, state: dict) -> None:
        # an unpickled config (in a process that never made one) must find its models too
        self.__dict__.update(state)
        register_models()


def register_models() -> None:
    """Register `CoEModel` / `CoEForCausalLM` with AutoModel / AutoModelForCausalLM (by importing
    `coe_moe.modeling_coe`, which registers them). Every CoEConfig calls it once it is made: an
    Auto class needs a config first, so `import coe_moe` does not import transformers' modeling
    code (seconds) until a model is wanted."""
    if "coe_moe.modeling_coe" not in sys.modules:
        import coe_moe.modeling_coe  # noqa: F401


def check_moe_arguments(
    *,
    num_experts: int,
    top_k: int,
    num_iterations: int,
    num_shared_experts: int,
    moe_intermediate_size: int,
    expert_backend: str,
) -> None:
    """Raise a ValueError naming the fix for an impossible Chain-of-Experts layer."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    check_top_k(top_k, num_experts)
    if num_iterations < 1:
        raise ValueError(
            f"num_iterations (C) must be >= 1, got {num_iterations}: use 1 for a standard MoE"
        )
    if num_shared_experts < 0:
        raise ValueError(
            f"num_shared_experts must be >= 0 (0: no shared expert), got {num_shared_experts}"
        )
    if moe_intermediate_size < 1:
        raise ValueError(f"moe_intermediate_size must be >= 1, got {moe_intermediate_size}")
    if expert_backend not in EXPERT_BACKENDS:
        raise ValueError(f"expert_backend must be one of {EXPERT_BACKENDS}, got {expert_backend!r}")


def check_top_k(top_k: int, num_experts: int) -> None:
    """Raise a ValueError naming the fix unless 1 <= top_k <= num_experts."""
    if not 1 <= top_k <= num_experts:
        raise ValueError(
            f"top_k must be between 1 and num_experts ({num_experts}), got {top_k}: lower top_k "
            "or add experts"
        )


AutoConfig.register(CoEConfig.model_type, CoEConfig, exist_ok=True)
