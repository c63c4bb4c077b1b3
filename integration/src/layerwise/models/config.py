"""`ModelConfig`: the model of a run (the `model:` section of a pre-training config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from layerwise_core import LLAMA_PRESETS, LayerwiseConfig

__all__ = ["ModelConfig"]


class ModelConfig(LayerwiseConfig):
    preset: str = "llama-tiny"  # a layerwise_core.LLAMA_PRESETS name
    overrides: dict[str, Any] = Field(default_factory=dict)  # LlamaConfig fields to replace
    # normalisation of the decoder blocks: Pre-LN, LayerNorm Scaling (1/sqrt(l)), Mix-LN (ln-scaling)
    norm: Literal["pre_ln", "lns", "mix_ln"] = "pre_ln"
    post_ln_fraction: float = Field(0.25, ge=0.0, le=1.0)  # Mix-LN: leading share of Post-LN blocks
    # simulated low-bit training (Stable-SPAM's 4-bit runs): fake-quantised weights and inputs of
    # every Linear but the LM head, straight-through gradients (layerwise_kernels.apply_fake_quant)
    quant: Literal["none", "int8", "int4", "fp4"] = "none"
    quant_weight_group_size: int | None = Field(None, ge=1)  # None: per output channel
    quant_act_group_size: int | None = Field(None, ge=1)  # None: per token
    # MLP of every block: Llama's dense SwiGLU, a top-k MoE, or Chain-of-Experts (coe-moe)
    mlp: Literal["dense", "moe", "coe"] = "dense"
    num_experts: int = Field(63, ge=1)  # moe/coe: routed experts per layer
    num_shared_experts: int = Field(1, ge=0)  # moe/coe: always-on experts
    moe_intermediate_size: int | None = Field(None, ge=1)  # moe/coe: expert width; None: ffn // 4
    top_k: int = Field(8, ge=1)  # moe/coe: experts per token (per iteration for coe)
    num_iterations: int = Field(2, ge=1)  # coe: iterations C (moe always runs C = 1)
    aux_loss_coef: float = Field(0.001, ge=0.0)  # moe/coe: alpha of the sequence-level balance loss
    init_std: float = Field(0.02, gt=0.0)  # std of the N(0, std) init of Linear/Embedding weights

    @model_validator(mode="after")
    def _moe_fits(self) -> ModelConfig:
        if self.mlp != "dense" and self.top_k > self.num_experts:
            raise ValueError(
                f"model.top_k {self.top_k} > model.num_experts {self.num_experts}; lower it"
            )
        if self.mlp != "dense" and self.norm == "mix_ln":
            raise ValueError(
                "model.norm=mix_ln needs model.mlp=dense (Mix-LN rewires the residual)"
            )
        return self

    @field_validator("overrides")
    @classmethod
    def _known_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        # a typo would otherwise be kept as an unused LlamaConfig attribute: the default model
        if "vocab_size" in overrides:
            raise ValueError(
                "the vocabulary size comes from the tokenizer (data.tokenizer, data.vocab_size): "
                "remove model.overrides.vocab_size"
            )
        if overrides:
            from transformers import LlamaConfig

            from layerwise_core import check_config_fields

            check_config_fields(LlamaConfig, overrides, "model.overrides.")
        return overrides

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        if name not in LLAMA_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {list(LLAMA_PRESETS)}")
        return name
