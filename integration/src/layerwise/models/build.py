"""`build_model`: the model of a run, a Hugging Face `LlamaForCausalLM` of a named size (or its
masked-diffusion / MoE / CoE variant) initialised as in the papers, with its norm scheme and
simulated quantisation."""

from __future__ import annotations

from transformers import LlamaForCausalLM

from coe_moe import CoEConfig, CoEForCausalLM
from layerwise.models.config import ModelConfig
from layerwise_core import UsageError, init_normal_, llama_config
from layerwise_core.bidirectional_llama import (
    BidirectionalLlamaConfig,
    BidirectionalLlamaForMaskedDiffusion,
)
from layerwise_kernels import apply_fake_quant
from ln_scaling import apply_norm_scheme

__all__ = ["apply_quant", "build_model"]


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    block_size: int,
    eos_token_id: int | None = None,
    *,
    objective: str = "ntp",
    mask_token_id: int | None = None,
):
    """`LlamaForCausalLM(llama_config(preset, vocab_size, **overrides))` with N(0, init_std) weights,
    then the norm scheme of `cfg.norm` (`ln_scaling.apply_norm_scheme`; saved as model type
    "ln_scaling", so the Auto classes reload the model exactly once `ln_scaling` is imported).

    Draws from the global torch RNG: seed it first (`layerwise_core.set_seed`).
    """
    fields = dict(cfg.overrides)
    fields.setdefault("max_position_embeddings", max(block_size, 128))
    if eos_token_id is not None:
        fields.setdefault("eos_token_id", eos_token_id)
    config = llama_config(cfg.preset, vocab_size=vocab_size, **fields)
    if config.max_position_embeddings < block_size:
        raise UsageError(
            f"train.block_size {block_size} exceeds model max_position_embeddings "
            f"{config.max_position_embeddings}: raise model.overrides.max_position_embeddings"
        )
    if objective == "mdm":
        # a masked-diffusion LM: the same Llama with bidirectional attention and a [MASK] id
        # (the tokenizer's, or one extra id past its vocabulary)
        if mask_token_id is None:
            mask_token_id = vocab_size
            config = llama_config(cfg.preset, vocab_size=vocab_size + 1, **fields)
        kept = {
            k: v
            for k, v in config.to_dict().items()
            if k not in ("model_type", "architectures", "transformers_version")
        }
        model = BidirectionalLlamaForMaskedDiffusion(
            BidirectionalLlamaConfig(mask_token_id=mask_token_id, logit_shift=0, **kept)
        )
    elif cfg.mlp != "dense":
        model = _build_moe_model(cfg, config)
    else:
        model = LlamaForCausalLM(config)
    init_normal_(model, cfg.init_std)
    if cfg.norm != "pre_ln":
        # after the init: Mix-LN's new Post-LN norms start at ones, LNS adds no parameters
        apply_norm_scheme(model, cfg.norm, post_ln_fraction=cfg.post_ln_fraction)
    apply_quant(model, cfg)
    return model


def apply_quant(model, cfg: ModelConfig) -> None:
    """Simulated low-precision training (`model.quant`): fake-quantised Linear layers."""
    if cfg.quant != "none":
        apply_fake_quant(
            model,
            cfg.quant,
            weight_group_size=cfg.quant_weight_group_size,
            act_group_size=cfg.quant_act_group_size,
        )


def _build_moe_model(cfg: ModelConfig, llama):
    """A `CoEForCausalLM` with the preset's attention, norms and embeddings and an MoE MLP:
    `mlp: moe` is C = 1 (a standard top-k MoE), `mlp: coe` Chain-of-Experts (coe-moe)."""
    config = CoEConfig(
        vocab_size=llama.vocab_size,
        hidden_size=llama.hidden_size,
        num_hidden_layers=llama.num_hidden_layers,
        num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads,
        max_position_embeddings=llama.max_position_embeddings,
        rms_norm_eps=llama.rms_norm_eps,
        rope_parameters=llama.rope_parameters,
        tie_word_embeddings=llama.tie_word_embeddings,
        initializer_range=cfg.init_std,
        eos_token_id=llama.eos_token_id,
        moe_intermediate_size=cfg.moe_intermediate_size or llama.intermediate_size // 4,
        num_experts=cfg.num_experts,
        num_shared_experts=cfg.num_shared_experts,
        top_k=cfg.top_k,
        num_iterations=1 if cfg.mlp == "moe" else cfg.num_iterations,
        aux_loss_coef=cfg.aux_loss_coef,
    )
    return CoEForCausalLM(config)
