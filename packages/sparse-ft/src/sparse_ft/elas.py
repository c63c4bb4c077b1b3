"""ELAS (arXiv 2605.03667): a LLaMA with low-rank linears (LORO's factors) and a squared-ReLU FFN
whose activations are 2:4 sparse, as a Hugging Face model that saves and reloads as trained.

    cfg = ELASConfig(low_rank=128, mlp=ReLU2MLPConfig(activation_sparsity="2:4", grad="ste"))
    model = apply_elas(LlamaForCausalLM(config), cfg)      # in place; also on a meta-device model
    ...train with LOROAdamW; sparse_ft.set_elas_step(model, completed_updates) after each update...
    model.save_pretrained(path)        # config.json: model_type "elas_llama", the ELASConfig dump
    AutoModelForCausalLM.from_pretrained(path)   # after `import sparse_ft`: the same model
    merge_elas(model)                  # low-rank factors -> dense nn.Linear, for inference

What `apply_elas` changes in each decoder block (embeddings, lm_head and norms stay as they are):

    q/k/v/o_proj            -> LowRankLinear(rank)           when low_rank.rank and low_rank.attention
    mlp (SwiGLU, d_ff)      -> ELASFFN(d, F, rank)           when cfg.mlp (rank when low_rank.mlp)
    mlp gate/up/down_proj   -> LowRankLinear(rank)           when cfg.mlp is None and low_rank.mlp

    F = ceil(ffn_multiplier * d_ff / multiple_of) * multiple_of      (ReLU2MLPConfig.ffn_dim)

The squared-ReLU FFN keeps the dense parameter count of SwiGLU with 1.5x its width (two matrices
of d x F instead of three of d x d_ff). The authors' code truncates, F = int(1.5 d_ff) (60M:
2064, 350M: 4104, 1B: 8191); here F is rounded UP to a multiple of 64 (2112, 4160, 8192): 8191 is
not even a multiple of 4 (no 2:4 groups), and the semi-structured sparse GEMM wants the sparse
operand's reduction size a multiple of 64 (CUTLASS fp16/bf16) or 16 (cuSPARSELt), as do
tensor-core tiles of the dense GEMMs; padding at run time would cost a copy per step. The FFN
gains < 3% parameters (60M: 2112 vs 2064).

Saving: `apply_elas` turns the model into an `ElasLlamaForCausalLM` (a `LlamaForCausalLM`
subclass, same forward and parameter names) whose config is an `ElasLlamaConfig` (a `LlamaConfig`
with model type "elas_llama" and the `ELASConfig` dump under `elas`). `import sparse_ft` registers
both with `AutoConfig` / `AutoModelForCausalLM`; the model class rebuilds the ELAS blocks in its
constructor, so `from_pretrained` loads the factors and each FFN's `elas_step` (the warm-up
counter, a persistent buffer) like any weight. Without sparse_ft imported, transformers refuses
the unknown model type instead of loading a different model. `layerwise_core.load_pretrained`
imports sparse_ft for such a checkpoint.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from layerwise_core import LayerwiseConfig
from sparse_ft.low_rank import LowRankConfig, LowRankLinear

if TYPE_CHECKING:
    from sparse_ft.elas_ffn import ELASFFN

__all__ = [
    "ELAS_CONFIG_KEY",
    "MODEL_TYPE",
    "ELASConfig",
    "ElasLlamaConfig",
    "ElasLlamaForCausalLM",
    "ReLU2MLPConfig",
    "apply_elas",
    "merge_elas",
]

MODEL_TYPE = "elas_llama"
ELAS_CONFIG_KEY = "elas"  # config.json key of the ELASConfig dump

# PyYAML reads YAML 1.1, where an unquoted 2:4 is a base-60 ("sexagesimal") integer: 2 * 60 + 4
_YAML_SEXAGESIMAL_2_4 = 124


class ReLU2MLPConfig(LayerwiseConfig):
    """The squared-ReLU FFN of ELAS, out = down(S(relu(up(x))^2)), with S the 2:4 selector (keep
    the 2 largest of every 4 consecutive features of a token) once `warmup_steps` updates are done.
    Defaults: the paper's (1.5x width, 2:4, straight-through gradient, 1000 dense warm-up steps).
    """

    ffn_multiplier: float = Field(1.5, gt=0)  # F / d_ff before rounding (1.5: SwiGLU's param count)
    multiple_of: int = Field(64, ge=4)  # F is rounded up to a multiple of this (2:4 / GEMM tiles)
    activation_sparsity: Literal["none", "2:4"] = "2:4"  # "none": the dense ReLU^2 FFN
    grad: Literal["ste", "masked"] = "ste"  # backward through S: the paper's STE or S's own
    warmup_steps: int = Field(1000, ge=0)  # optimizer updates with S = identity (dense warm-up)
    # kernels of the select (ELASFFN's BACKENDS): "torch" = pure-torch select and dense GEMM
    backend: Literal["auto", "torch", "triton"] = "auto"

    @field_validator("activation_sparsity", mode="before")
    @classmethod
    def _yaml_base_60(cls, value: Any) -> Any:
        # `activation_sparsity: 2:4` unquoted in a YAML file arrives as the int 124 (YAML 1.1
        # base-60 notation, as in 1:30 = 90): read it as the "2:4" the file means
        if type(value) is int and value == _YAML_SEXAGESIMAL_2_4:
            return "2:4"
        return value

    @field_validator("multiple_of")
    @classmethod
    def _whole_groups(cls, value: int) -> int:
        if value % 4:
            raise ValueError(
                f"multiple_of must be a multiple of 4 (the FFN width is split into 2:4 groups of "
                f"4): use {4 * math.ceil(value / 4)} or 64 (the sparse GEMM's alignment)"
            )
        return value

    @property
    def sparse(self) -> bool:
        """True when the FFN applies the 2:4 selector after its warm-up."""
        return self.activation_sparsity == "2:4"

    def ffn_dim(self, intermediate_size: int) -> int:
        """F = ceil(ffn_multiplier * intermediate_size / multiple_of) * multiple_of, computed
        exactly (the multiplier as the decimal it is written as: 1.1 * 10 gives 11, not 12)."""
        if intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1, got {intermediate_size}")
        width = Fraction(repr(self.ffn_multiplier)) * intermediate_size
        return math.ceil(width / self.multiple_of) * self.multiple_of

    def build(
        self,
        hidden_size: int,
        intermediate_size: int,
        rank: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ELASFFN:
        """The FFN replacing a SwiGLU of width `intermediate_size`: `ELASFFN(hidden_size,
        ffn_dim(intermediate_size), rank, ...)`; `rank` None: full-rank up / down projections."""
        from sparse_ft.elas_ffn import ELASFFN

        return ELASFFN(
            hidden_size,
            self.ffn_dim(intermediate_size),
            rank,
            sparse=self.sparse,
            warmup_steps=self.warmup_steps,
            grad=self.grad,
            backend=self.backend,
            device=device,
            dtype=dtype,
        )


class ELASConfig(LayerwiseConfig):
    """What `apply_elas` does to a Llama: which linears become low rank (`low_rank`; a bare int is
    the rank) and which FFN replaces SwiGLU (`mlp`; None keeps SwiGLU, low rank if low_rank.mlp).
    Defaults: the squared-ReLU 2:4 FFN at full rank; the paper's ELAS also sets low_rank (LORO's
    ranks: 60M 128, 130M 256, 350M 256, 1B 512)."""

    low_rank: LowRankConfig = Field(default_factory=LowRankConfig)
    mlp: ReLU2MLPConfig | None = Field(default_factory=ReLU2MLPConfig)

    @model_validator(mode="after")
    def _changes_something(self) -> ELASConfig:
        if self.mlp is None and not self.low_rank.enabled:
            raise ValueError(
                "ELASConfig with mlp=None and no low rank changes nothing: set low_rank (e.g. "
                "low_rank=128) or keep the squared-ReLU mlp"
            )
        return self

    def apply(self, model: nn.Module) -> nn.Module:
        """`apply_elas(model, self)`."""
        return apply_elas(model, self)


class ElasLlamaConfig(LlamaConfig):
    """`LlamaConfig` of an ELAS model: model type "elas_llama" and the `ELASConfig` dump under
    `elas` (None: `ELASConfig()`'s defaults). `intermediate_size` stays the SwiGLU width d_ff that
    the squared-ReLU FFN width F is derived from (`ReLU2MLPConfig.ffn_dim`)."""

    model_type = MODEL_TYPE

    def __init__(self, elas: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # validated now: a bad checkpoint fails at load with the config error, not in a module
        self.elas = None if elas is None else ELASConfig.model_validate(elas).to_dict()
        super().__init__(**kwargs)

    @property
    def elas_config(self) -> ELASConfig:
        """The recorded `ELASConfig`."""
        return ELASConfig() if self.elas is None else ELASConfig.model_validate(self.elas)


class ElasLlamaForCausalLM(LlamaForCausalLM):
    """`LlamaForCausalLM` with the blocks `config.elas` records (`apply_elas`), built in the
    constructor: `from_pretrained` loads an ELAS checkpoint's factors and warm-up counters as the
    model's own weights."""

    config_class = ElasLlamaConfig

    def __init__(self, config: ElasLlamaConfig) -> None:
        super().__init__(config)
        _convert_blocks(self, config.elas_config)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        _sync_elas_steps(model)
        return loaded


def _sync_elas_steps(model: nn.Module) -> None:
    """Each ELASFFN's host copy of its warm-up counter from the `elas_step` buffer: transformers
    writes loaded buffers directly, past the module's `_load_from_state_dict`."""
    from sparse_ft.elas_ffn import ELASFFN

    for module in model.modules():
        if isinstance(module, ELASFFN) and not module.elas_step.is_meta:
            module.set_step(int(module.elas_step))


def _check_llama(model: nn.Module) -> None:
    if type(model) is ElasLlamaForCausalLM:
        raise ValueError(
            "apply_elas: the model is already an ELAS model: apply it once, to the base "
            "LlamaForCausalLM (merge_elas turns low-rank factors back into dense linears)"
        )
    if type(model) is not LlamaForCausalLM or type(model.config) is not LlamaConfig:
        raise TypeError(
            f"apply_elas needs a transformers LlamaForCausalLM with a LlamaConfig, got "
            f"{type(model).__name__} with {type(getattr(model, 'config', None)).__name__}: build "
            "the Llama, apply ELAS, then any norm scheme or quantisation (their configs record "
            "what they wrap)"
        )


def apply_elas(model: nn.Module, cfg: ELASConfig | dict[str, Any]) -> nn.Module:
    """Make a transformers `LlamaForCausalLM` an ELAS model in place and return it.

    Per decoder block: q/k/v/o_proj become `LowRankLinear(in, out, cfg.low_rank.rank)` when
    low_rank.rank is set and low_rank.attention; the SwiGLU MLP becomes `cfg.mlp.build(d, d_ff,
    rank)` (the squared-ReLU FFN, low rank when low_rank.mlp), or, with `cfg.mlp` None, keeps its
    gate/up/down projections as `LowRankLinear` when low_rank.mlp. New modules are made on the
    replaced modules' device and dtype ("meta" included: the model is then materialised by
    parameter name, and the `elas_step` buffers are set with `set_elas_step(model, 0)`) with their
    constructors' initialisation (Xavier-normal factors). The model becomes an
    `ElasLlamaForCausalLM` and its config an `ElasLlamaConfig` recording `cfg` (in place: modules
    holding the config see the change), so `save_pretrained` / `from_pretrained` round-trip it.

    Raises:
        TypeError: not a `LlamaForCausalLM` with a plain `LlamaConfig`.
        ValueError: already ELAS, or a squared-ReLU FFN asked of a model with MLP biases.
    """
    cfg = ELASConfig.model_validate(cfg)
    _check_llama(model)
    if cfg.mlp is not None and model.config.mlp_bias:
        raise ValueError(
            "apply_elas: the squared-ReLU FFN has no biases but the model has mlp_bias=True: "
            "build the Llama with mlp_bias=False, or keep SwiGLU with ELASConfig(mlp=None)"
        )
    _convert_blocks(model, cfg)
    _record(model, cfg)
    return model


def _record(model: nn.Module, cfg: ELASConfig) -> None:
    """Switch `model` to ELAS's classes (same instances) with `cfg` recorded in its config."""
    model.config.__class__ = ElasLlamaConfig
    model.config.elas = cfg.to_dict()
    model.__class__ = ElasLlamaForCausalLM


def _low_rank(linear: nn.Module, rank: int) -> LowRankLinear:
    weight = linear.weight
    return LowRankLinear(
        linear.in_features,
        linear.out_features,
        rank,
        bias=linear.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )


def _blocks(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def _convert_blocks(model: nn.Module, cfg: ELASConfig) -> None:
    """Replace the linears / MLP of every decoder block as `cfg` says (see `apply_elas`)."""
    config = model.config
    rank = cfg.low_rank.rank
    for block in _blocks(model):
        attention = block.self_attn
        if rank is not None and cfg.low_rank.attention:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(attention, name, _low_rank(getattr(attention, name), rank))
        mlp_rank = rank if cfg.low_rank.mlp else None
        if cfg.mlp is not None:
            weight = block.mlp.up_proj.weight
            block.mlp = cfg.mlp.build(
                config.hidden_size,
                config.intermediate_size,
                mlp_rank,
                device=weight.device,
                dtype=weight.dtype,
            )
        elif mlp_rank is not None:
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(block.mlp, name, _low_rank(getattr(block.mlp, name), mlp_rank))


@torch.no_grad()
def merge_elas(model: nn.Module) -> nn.Module:
    """Merge every `LowRankLinear` of an ELAS model into an `nn.Linear` with W = B A^T (in place;
    returns the model): the same logits up to rounding, full-rank storage for inference. The
    recorded config gets rank None, so the merged model saves and reloads as merged; a model that
    kept SwiGLU (mlp None) becomes a plain `LlamaForCausalLM` with a `LlamaConfig` (loads without
    sparse_ft). Squared-ReLU FFNs keep their settings and `elas_step` (the 2:4 selector stays on).
    """
    if not isinstance(model.config, ElasLlamaConfig) or not isinstance(model, ElasLlamaForCausalLM):
        raise TypeError(
            f"merge_elas needs a model made by apply_elas (an ElasLlamaForCausalLM), got "
            f"{type(model).__name__}: apply_elas(model, cfg) first"
        )
    cfg = model.config.elas_config
    config = model.config
    for block in _blocks(model):
        _merge_children(block.self_attn)
        if cfg.mlp is None:
            _merge_children(block.mlp)  # a low-rank SwiGLU
        elif isinstance(block.mlp.up_proj, LowRankLinear):
            block.mlp = _merged_ffn(block.mlp, cfg.mlp, config)
    if cfg.mlp is None:  # nothing of ELAS is left: a plain Llama
        del config.elas
        config.__class__ = LlamaConfig
        model.__class__ = LlamaForCausalLM
    else:
        full_rank = cfg.low_rank.model_copy(update={"rank": None})
        config.elas = ELASConfig(low_rank=full_rank, mlp=cfg.mlp).to_dict()
    return model


def _merge_children(parent: nn.Module) -> None:
    for name, child in list(parent.named_children()):
        if isinstance(child, LowRankLinear):
            setattr(parent, name, child.to_linear())


def _merged_ffn(ffn: ELASFFN, mlp: ReLU2MLPConfig, config: LlamaConfig) -> ELASFFN:
    """The full-rank ELASFFN with `ffn`'s merged weights, warm-up counter and stats switch."""
    weight = ffn.up_proj.weight_in
    dense = mlp.build(
        config.hidden_size, config.intermediate_size, None, device=weight.device, dtype=weight.dtype
    )
    dense.up_proj.weight.copy_(ffn.up_proj.merged_weight())
    dense.down_proj.weight.copy_(ffn.down_proj.merged_weight())
    dense.set_step(int(ffn.elas_step))
    dense.collect_stats = getattr(ffn, "collect_stats", False)
    dense.train(ffn.training)
    return dense


AutoConfig.register(MODEL_TYPE, ElasLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(ElasLlamaConfig, ElasLlamaForCausalLM, exist_ok=True)
