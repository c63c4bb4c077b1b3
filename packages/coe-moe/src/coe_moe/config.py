"""`CoEMLPConfig` / `MoEMLPConfig`: the MLP of every block as Chain-of-Experts or as a top-k MoE;
`.build(llama_config)` makes a `CoEForCausalLM` with the attention, norms, embeddings and RoPE of
the Llama config.

    model = coe_moe.CoEMLPConfig().build(llama_config)   # C = 2 iterations of K = 4 experts
    model = coe_moe.MoEMLPConfig().build(llama_config)   # C = 1, K = 8: the same expert compute

The defaults are the paper's (Wang et al., "Chain-of-Experts", arXiv 2506.18945, headline
setting): 63 routed + 1 shared experts, the iso-compute pair CoE C = 2, K = 4 vs MoE K = 8 (8 routed
expert calls per token each), and a sequence-level balance loss with alpha = 0.001. `CoEConfig`,
the Hugging Face config, has the same defaults (a test keeps them equal). The expert width is ours
to choose: the paper fixes 704 at hidden 1024; here it follows the Llama config, a quarter of its
dense intermediate_size unless given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from layerwise_core import LayerwiseConfig

# isort: split
from pydantic import Field, model_validator

from coe_moe.configuration_coe import CoEConfig, check_top_k

if TYPE_CHECKING:
    from coe_moe.modeling_coe import CoEForCausalLM

__all__ = ["CoEMLPConfig", "MoEMLPConfig"]


class _ExpertMLPConfig(LayerwiseConfig):
    """The fields and `build` shared by CoE and MoE; see the module docstring."""

    num_experts: int = Field(63, ge=1)  # routed experts per layer (shared by its iterations)
    num_shared_experts: int = Field(1, ge=0)  # always-on experts, run in every iteration
    # width of one expert's SwiGLU; None: the Llama config's intermediate_size // 4
    moe_intermediate_size: int | None = Field(None, ge=1)
    top_k: int = Field(ge=1)  # K: experts selected per token in each iteration
    num_iterations: int = Field(ge=1)  # C: passes of the chain through the experts
    aux_loss_coef: float = Field(0.001, ge=0.0, allow_inf_nan=False)  # alpha of the balance loss
    # the balance loss per sequence (DeepSeek-V2's seq_aux, the paper) or over the whole batch
    # (Switch / OLMoE)
    balance_scope: Literal["sequence", "batch"] = "sequence"
    # router z-loss coefficient (ST-MoE; OLMoE 0.001); 0: none, as in the paper
    router_z_loss_coef: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    # z_{t+1} = z_t + update (the paper) or update alone; outer: the block input h added back
    # after the chain (a standard Pre-LN MoE block, h + MoE(RMSNorm(h)): inner false, outer true)
    inner_residual: bool = True
    outer_residual: bool = False

    @model_validator(mode="after")
    def _top_k_fits(self) -> _ExpertMLPConfig:
        check_top_k(self.top_k, self.num_experts)
        return self

    def hf_config(self, llama_config: Any, init_std: float = 0.02) -> CoEConfig:
        """The `CoEConfig` of a model with `llama_config`'s attention, norms, embeddings, RoPE and
        token ids, this MLP, and N(0, init_std) weights."""
        llama = llama_config
        return CoEConfig(
            vocab_size=llama.vocab_size,
            hidden_size=llama.hidden_size,
            num_hidden_layers=llama.num_hidden_layers,
            num_attention_heads=llama.num_attention_heads,
            num_key_value_heads=llama.num_key_value_heads,
            head_dim=llama.head_dim,
            hidden_act=llama.hidden_act,
            max_position_embeddings=llama.max_position_embeddings,
            rms_norm_eps=llama.rms_norm_eps,
            rope_parameters=llama.rope_parameters,
            attention_bias=llama.attention_bias,
            attention_dropout=llama.attention_dropout,
            tie_word_embeddings=llama.tie_word_embeddings,
            pad_token_id=llama.pad_token_id,
            bos_token_id=llama.bos_token_id,
            eos_token_id=llama.eos_token_id,
            initializer_range=init_std,
            moe_intermediate_size=self.moe_intermediate_size or llama.intermediate_size // 4,
            num_experts=self.num_experts,
            num_shared_experts=self.num_shared_experts,
            top_k=self.top_k,
            num_iterations=self.num_iterations,
            aux_loss_coef=self.aux_loss_coef,
            balance_scope=self.balance_scope,
            router_z_loss_coef=self.router_z_loss_coef,
            inner_residual=self.inner_residual,
            outer_residual=self.outer_residual,
        )

    def build(self, llama_config: Any, init_std: float = 0.02) -> CoEForCausalLM:
        """`CoEForCausalLM(self.hf_config(llama_config, init_std))`: a new model drawn from the
        global torch RNG (seed it first)."""
        from coe_moe.modeling_coe import CoEForCausalLM

        return CoEForCausalLM(self.hf_config(llama_config, init_std))


class CoEMLPConfig(_ExpertMLPConfig):
    """Chain-of-Experts: C iterations, each re-routed to K of the layer's experts."""

    top_k: int = Field(4, ge=1)
    num_iterations: int = Field(2, ge=1)


class MoEMLPConfig(_ExpertMLPConfig):
    """A standard top-k MoE with a shared expert: the same layer with one iteration."""

    top_k: int = Field(8, ge=1)
    num_iterations: Literal[1] = 1
