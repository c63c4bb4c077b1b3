"""`ModelConfig`: the model of a run (the `model:` section of a pre-training config).

    model:
      preset: llama-130m                      # a layerwise_core.LLAMA_PRESETS size
      n_kv_heads: 4                           # grouped-query attention (null: one per head)
      norm: {scheme: lns}                     # ln_scaling.NormConfig (or just `norm: lns`)
      mlp: {name: coe, top_k: 4}              # dense | moe: coe_moe.MoEMLPConfig
                                              #       | coe: coe_moe.CoEMLPConfig
                                              #       | relu2: sparse_ft.ReLU2MLPConfig (ELAS)
      low_rank: 128                           # sparse_ft.LowRankConfig (or {rank: 128, ...})
      quant: {format: int4}                   # simulated low-bit training (or `quant: int4`)
      heads: {count: 3, blocks_in_head: 8}    # sparse_ft.HeadsConfig (or `heads: 3`): NeuroTrails

The norm scheme, the MLP and the low-rank factorisation are their packages' own configs (the MLP
a tagged choice); only the quantisation switch is written here, since layerwise_kernels (plain
torch) has no config class: its defaults are `apply_fake_quant`'s.

ELAS (arXiv 2605.03667): `mlp: relu2` (a squared-ReLU FFN, 2:4 activation sparsity after a dense
warm-up) and / or `low_rank: R` (attention and MLP linears as two rank-R factors, LORO's
parameterisation); `build_model` applies `sparse_ft.ELASConfig(low_rank=..., mlp=...)` to the
Llama. Unquoted `activation_sparsity: 2:4` is the YAML 1.1 sexagesimal int 124, which
`ReLU2MLPConfig` reads as "2:4".

NeuroTrails / TreeNet (arXiv 2505.17909): `heads: K` (K > 1) builds a `sparse_ft`
`MultiHeadForCausalLM`: the first L - b blocks shared, each of K heads owning a copy of the last
b blocks (`blocks_in_head: b`; null: round(2L/3), the official split; "all": K independent full
models, the dense full ensemble), its final norm and its own LM head. It is a dense Pre-LN SwiGLU
Llama: other MLPs, norm schemes and the low-rank factorisation are refused. Dynamic sparsity is
the run's `sparsity:` section (`layerwise.train.config`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn
from transformers import LlamaConfig

from coe_moe import CoEMLPConfig, MoEMLPConfig
from layerwise.legacy_layout import migrate_model
from layerwise_core import LLAMA_PRESETS, LayerwiseConfig, check_config_fields, tagged_choice
from layerwise_kernels import apply_fake_quant
from ln_scaling import NormConfig
from sparse_ft import LowRankConfig, ReLU2MLPConfig
from sparse_ft.multi_head import HeadsConfig

__all__ = ["MLPS", "ModelConfig", "QuantConfig"]

# dense: Llama's SwiGLU; moe / coe: coe-moe's top-k MoE / Chain-of-Experts (arXiv 2506.18945);
# relu2: sparse-ft's squared-ReLU FFN with 2:4 activation sparsity (ELAS, arXiv 2605.03667)
MLPS = {"dense": None, "moe": MoEMLPConfig, "coe": CoEMLPConfig, "relu2": ReLU2MLPConfig}


class QuantConfig(LayerwiseConfig):
    """Simulated low-bit training (Stable-SPAM's 4-bit runs): the weights and inputs of every
    Linear but the LM head fake-quantised, straight-through gradients
    (`layerwise_kernels.apply_fake_quant`, whose defaults these are). `quant: int4` means
    `{format: int4}`."""

    format: Literal["none", "int8", "int4", "fp4"] = "none"  # none: full precision
    weight_group_size: int | None = Field(None, ge=1)  # None: one scale per output channel
    act_group_size: int | None = Field(None, ge=1)  # None: one scale per token

    @model_validator(mode="before")
    @classmethod
    def _format_shorthand(cls, data: Any) -> Any:
        return {"format": data} if isinstance(data, str) else data

    def apply(self, model: nn.Module) -> nn.Module:
        """Fake-quantise `model`'s Linear layers in place (nothing for `none`); returns it."""
        return apply_fake_quant(
            model,
            self.format,
            weight_group_size=self.weight_group_size,
            act_group_size=self.act_group_size,
        )


class ModelConfig(LayerwiseConfig):
    """The architecture of a run's model, its initialisation and its training-time switches."""

    preset: str = "llama-tiny"  # a layerwise_core.LLAMA_PRESETS name
    overrides: dict[str, Any] = Field(default_factory=dict)  # LlamaConfig fields to replace
    # grouped-query attention: key/value heads, each shared by n_heads / n_kv_heads query heads
    # (G = n_heads / n_kv_heads; spec studies.md A.4: n_kv_heads = n_heads / G); a divisor of
    # the attention heads; null: the preset's / overrides' num_key_value_heads
    n_kv_heads: int | None = Field(None, ge=1)
    init_std: float = Field(0.02, gt=0.0)  # std of the N(0, std) init of Linear/Embedding weights
    # normalisation of the decoder blocks: pre_ln | lns | mix_ln | mix_ln+lns (ln-scaling)
    norm: NormConfig = Field(default_factory=NormConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)  # simulated low-bit training
    # MLP of every block: Llama's dense SwiGLU, a top-k MoE, or Chain-of-Experts (coe-moe)
    mlp: tagged_choice(MLPS, default="dense")
    # ELAS / LORO: attention and MLP linears as two rank-r factors (sparse_ft.LowRankLinear);
    # `low_rank: 128` means {rank: 128}; rank null: full rank (the default)
    low_rank: LowRankConfig = Field(default_factory=LowRankConfig)
    # NeuroTrails / TreeNet: K heads on a shared backbone (`heads: 3` means {count: 3}); count 1:
    # one model (the default)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        # model.post_ln_fraction, model.quant_*_group_size, ...: see layerwise.legacy_layout
        return migrate_model(data) if isinstance(data, dict) else data

    @property
    def elas(self) -> bool:
        """Whether the model is an ELAS model (`mlp: relu2` or a `low_rank` rank)."""
        return self.mlp.name == "relu2" or self.low_rank.enabled

    @property
    def n_heads(self) -> int:
        """Query heads of the model (`overrides.num_attention_heads`, else the preset's)."""
        return int(
            self.overrides.get(
                "num_attention_heads", LLAMA_PRESETS[self.preset].num_attention_heads
            )
        )

    def key_value_heads(self) -> int | None:
        """`n_kv_heads`, or `overrides.num_key_value_heads`; None when neither is set."""
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        value = self.overrides.get("num_key_value_heads")
        return None if value is None else int(value)

    @model_validator(mode="after")
    def _kv_heads_divide(self) -> ModelConfig:
        if self.n_kv_heads is None:
            return self
        given = self.overrides.get("num_key_value_heads")
        if given is not None and int(given) != self.n_kv_heads:
            raise ValueError(
                f"model.n_kv_heads={self.n_kv_heads} and model.overrides.num_key_value_heads="
                f"{given} disagree: set only model.n_kv_heads"
            )
        heads = self.n_heads
        if heads % self.n_kv_heads:
            divisors = [k for k in range(1, heads + 1) if heads % k == 0]
            raise ValueError(
                f"model.n_kv_heads={self.n_kv_heads} does not divide the {heads} attention heads "
                f"(grouped-query attention shares each key/value head by a whole group): choose "
                f"one of {divisors}"
            )
        return self

    @model_validator(mode="after")
    def _mix_ln_is_dense(self) -> ModelConfig:
        # Mix-LN rewires the residual of Llama's decoder layers, which the MoE / CoE model does
        # not have (ELAS keeps them: relu2 only replaces the MLP module)
        if self.mlp.name in ("moe", "coe") and self.norm.scheme.startswith("mix_ln"):
            raise ValueError(
                f"model.norm={self.norm.scheme} needs model.mlp=dense or relu2 (Mix-LN rewires "
                "the residual of Llama's decoder layers)"
            )
        return self

    @model_validator(mode="after")
    def _elas_fits(self) -> ModelConfig:
        if self.low_rank.enabled and self.mlp.name in ("moe", "coe"):
            raise ValueError(
                f"model.low_rank factorises a Llama's linears, not model.mlp={self.mlp.name}'s "
                "experts: use model.mlp=dense or relu2 with model.low_rank, or model.low_rank=null"
            )
        if self.elas and self.quant.format != "none":
            raise ValueError(
                f"model.quant={self.quant.format} fake-quantises nn.Linear layers, not ELAS's "
                "low-rank factors and 2:4 FFN: use model.quant=none with model.mlp=relu2 / "
                "model.low_rank"
            )
        return self

    @model_validator(mode="after")
    def _heads_fit(self) -> ModelConfig:
        # the multi-head model copies Llama's own decoder layers (sparse_ft.MultiHeadForCausalLM)
        if not self.heads.enabled:
            return self
        other = [
            (name, value, fix)
            for name, value, fix, fits in (
                ("model.mlp", self.mlp.name, "dense", self.mlp.name == "dense"),
                ("model.norm", self.norm.scheme, "pre_ln", self.norm.scheme == "pre_ln"),
                ("model.low_rank", self.low_rank.rank, "null", not self.low_rank.enabled),
            )
            if not fits
        ]
        if other:
            name, value, fix = other[0]
            raise ValueError(
                f"model.heads={self.heads.count} builds a multi-head dense Pre-LN Llama "
                f"(NeuroTrails), which {name}={value} does not fit: set {name}={fix}, or "
                "model.heads=1"
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
            check_config_fields(LlamaConfig, overrides, "model.overrides.")
        return overrides

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        if name not in LLAMA_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {list(LLAMA_PRESETS)}")
        return name
