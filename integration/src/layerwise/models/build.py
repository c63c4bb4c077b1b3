"""`build_model`: the model of a run, a Hugging Face `LlamaForCausalLM` of a named size (or its
masked-diffusion / MoE / CoE variant) initialised as in the papers, with its norm scheme and
simulated quantisation."""

from __future__ import annotations

from transformers import LlamaForCausalLM

from layerwise.models.config import ModelConfig
from layerwise_core import UsageError, init_normal_, llama_config
from layerwise_core.bidirectional_llama import (
    BidirectionalLlamaConfig,
    BidirectionalLlamaForMaskedDiffusion,
)

__all__ = ["build_model"]


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    block_size: int,
    eos_token_id: int | None = None,
    *,
    objective: str = "ntp",
    mask_token_id: int | None = None,
):
    """`LlamaForCausalLM(llama_config(preset, vocab_size, **overrides))` with N(0, init_std) weights
    (the bidirectional masked-diffusion Llama for `objective="mdm"`, the MoE / CoE model of
    `cfg.mlp`), then the norm scheme of `cfg.norm` (`ln_scaling.NormConfig.apply`; saved as model
    type "ln_scaling", so the Auto classes reload the model once `ln_scaling` is imported) and the
    simulated quantisation of `cfg.quant`.

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
    elif cfg.mlp.name != "dense":  # coe_moe.MoEMLPConfig / CoEMLPConfig
        model = cfg.mlp.build(config, init_std=cfg.init_std)
    else:
        model = LlamaForCausalLM(config)
    init_normal_(model, cfg.init_std)
    if cfg.norm.scheme != "pre_ln":
        # after the init: Mix-LN's new Post-LN norms start at ones, LNS adds no parameters
        cfg.norm.apply(model)
    return cfg.quant.apply(model)
