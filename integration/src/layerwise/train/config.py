"""`PretrainConfig`: every knob of a pre-training run, as YAML + `a.b=value` overrides.

    cfg = PretrainConfig.from_yaml("run.yaml", overrides=["train.steps=300", "optim.lr=3e-3"])

The fields `objective`, `optimizer` and `model.norm` are the switches through which methods
enter a run (ARCHITECTURE.md); each is a `Literal` that lists what is implemented today.

`RESUME_SAFE_CHANGES` (below the schema) lists the only fields a resumed run may change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from layerwise.data.config import DataConfig
from layerwise_core import LLAMA_PRESETS, LayerwiseConfig

__all__ = [
    "RESUME_SAFE_CHANGES",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "SpamConfig",
    "SpectralConfig",
    "StableSpamConfig",
    "TrainConfig",
    "resume_changes",
]


def _betas_in_range(betas: tuple[float, float]) -> tuple[float, float]:
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(
            "Adam's betas are moment decay rates and must each be in [0, 1): use e.g. [0.9, 0.95]"
        )
    return betas


# (beta1, beta2) of Adam-type optimizers, each in [0, 1); shared with the fine-tuning config
AdamBetas = Annotated[tuple[float, float], AfterValidator(_betas_in_range)]


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


class OptimConfig(LayerwiseConfig):
    lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False)  # peak learning rate
    betas: AdamBetas = (0.9, 0.95)  # Adam moment decay rates, each in [0, 1)
    # decoupled decay, on >=2-D parameters only
    weight_decay: float = Field(0.1, ge=0.0, allow_inf_nan=False)
    eps: float = Field(1e-8, gt=0.0, allow_inf_nan=False)  # Adam denominator epsilon
    warmup_steps: int = Field(100, ge=0)  # linear warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine floor, as a fraction of lr
    # max global gradient norm; null: no clipping
    grad_clip: float | None = Field(1.0, gt=0.0, allow_inf_nan=False)


class SpamConfig(LayerwiseConfig):
    """SPAM (spam_opt.SPAM): spike-aware Adam with momentum reset; defaults of the paper."""

    warmup_steps: int = Field(150, ge=0)  # cosine warm-up steps after each momentum reset
    threshold: float = Field(5000.0, ge=0.0)  # spike if g^2 > threshold * v; 0 disables clipping
    reset_interval: int = Field(500, ge=0)  # steps between momentum resets (0: never)
    clip_delay: int = Field(20, ge=0)  # no spike clipping for this many steps after a reset
    density: float = Field(1.0, gt=0.0, le=1.0)  # < 1: sparse momentum on attention/MLP matrices
    reference_quirks: bool = False  # reproduce the official code bit for bit


class StableSpamConfig(LayerwiseConfig):
    """Stable-SPAM (spam_opt.StableSPAM): AdaClip + AdaGN + momentum reset; paper defaults."""

    gamma1: float = 0.7  # AdaGN norm momentum (-1: use beta1)
    gamma2: float = Field(0.9, ge=0.0, lt=1.0)  # AdaGN second moment of the norm
    gamma3: float = Field(0.999, ge=0.0, lt=1.0)  # AdaClip momentum of max|g|
    total_steps: int | None = Field(
        None, ge=1
    )  # cosine length of the momentum scale; None: train.steps
    eta_min: float = Field(0.5, ge=0.0, le=1.0)  # floor of that cosine
    reset_interval: int = Field(1000, ge=0)  # steps between momentum resets (0: never)
    reference_quirks: bool = False  # reproduce the official code bit for bit


class SpectralConfig(LayerwiseConfig):
    """Options of `spectral: alphadecay | llr` (spectral-opt); null fields take the papers' values."""

    interval: int | None = Field(None, ge=1)  # recompute period in steps; null: 500 / 100 (llr)
    ratio: tuple[float, float] | None = None  # (r_min, r_max); null: (0.6666, 3) / (1, 5) (llr)
    active_fraction: float = Field(0.2, gt=0.0, le=1.0)  # llr: adapt LRs during this share of steps
    ramp_steps: int = Field(50, ge=0)  # llr: steps of the linear ramp to each new peak LR
    exclude_first_last: bool = True  # alphadecay: first and last Linear keep optim.weight_decay
    min_eigs: int = Field(50, ge=2)  # modules with fewer ESD eigenvalues stay untuned


class TrainConfig(LayerwiseConfig):
    steps: int = Field(1000, ge=1)  # optimizer steps (the LR schedule spans them)
    batch_size: int = Field(8, ge=1)  # blocks per micro-batch per process
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    block_size: int = Field(128, ge=2)  # tokens per training sequence
    seed: int = Field(0, ge=0)  # model init and data order
    eval_every: int = Field(100, ge=0)  # validate every N steps (0: only at the end)
    # validation scores the first eval_batches * batch_size * world_size blocks; null: all
    eval_batches: int | None = Field(20, ge=1)
    save_every: int = Field(500, ge=0)  # checkpoint every N steps (0: only at the end)
    log_every: int = Field(10, ge=1)  # one metrics record per N steps (mean train loss over them)
    # step checkpoints kept (the newest N; older ones deleted once a newer one is complete);
    # null: keep all
    keep_last: int | None = Field(None, ge=1)
    # metrics.jsonl, config.yaml, history.jsonl, checkpoints/, final/
    out_dir: str = "runs/pretrain"
    resume: bool = False  # continue from out_dir/checkpoints/latest if there is one
    overwrite: bool = False  # replace a run already in out_dir (deletes it); else it is refused
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a bf16 GPU, else fp32
    # data parallelism over the processes of a launch (torchrun / accelerate launch; train/parallel.py):
    # ddp = replicated model, all-reduced gradients; fsdp2 = parameters, gradients and optimizer
    # states sharded over the processes (torch fully_shard per decoder layer); bf16 via its
    # MixedPrecisionPolicy
    parallelism: Literal["ddp", "fsdp2"] = "ddp"
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward
    compile: bool = False  # torch.compile each decoder layer's forward

    @model_validator(mode="after")
    def _resume_or_overwrite(self) -> TrainConfig:
        if self.resume and self.overwrite:
            raise ValueError(
                "train.resume and train.overwrite are both true: set one (continue the run in "
                "out_dir, or replace it)"
            )
        if self.parallelism == "fsdp2" and self.precision == "fp16":
            raise ValueError(
                "train.precision=fp16 needs a gradient scaler, which train.parallelism=fsdp2 does "
                "not run: use train.precision=bf16, or train.parallelism=ddp"
            )
        return self


class PretrainConfig(LayerwiseConfig):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # training objective: ntp = next-token prediction; meap = MEAP (arXiv 2502.07490): a share of
    # the input positions replaced by [MASK], next-token targets clean, validation unmasked;
    # mdm = masked diffusion (LLaDA): a bidirectional model, tokens masked with probability
    # t ~ U(0, 1], cross-entropy on the masked positions weighted by 1/t (train/mdm.py)
    objective: Literal["ntp", "meap", "mdm"] = "ntp"
    mask_ratio: float = Field(0.15, gt=0.0, lt=1.0)  # meap: share of inputs replaced by [MASK]
    # meap: "reference" = the official masks (same columns for the whole batch, 51 cycling by
    # step); "per_sequence" = independent positions per row
    mask_mode: Literal["reference", "per_sequence"] = "reference"
    # adamw: torch AdamW; spam / stable_spam: spam_opt (arXiv 2501.06842 / 2502.17055). All decay
    # only matrices (decoupled weight decay = optim.weight_decay)
    optimizer: Literal["adamw", "spam", "stable_spam"] = "adamw"
    spam: SpamConfig = Field(default_factory=SpamConfig)
    stable_spam: StableSpamConfig = Field(default_factory=StableSpamConfig)
    # heavy-tail guided hyper-parameters: AlphaDecay (per-module weight decay) or LLR (per-module LR)
    spectral: Literal["none", "alphadecay", "llr"] = "none"
    spectral_options: SpectralConfig = Field(default_factory=SpectralConfig)

    @model_validator(mode="after")
    def _warmup_fits(self) -> PretrainConfig:
        if self.optim.warmup_steps > self.train.steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) exceeds train.steps "
                f"({self.train.steps}); lower it"
            )
        return self


# The fields a resumed run (train.resume=true) may change; any other difference from the
# checkpoint's configuration refuses the resume (layerwise.train.pretrain). "any": any new value;
# "increase": a value >= the stored one; "ignored": how this invocation runs, not what the run
# is. Allowed changes are recorded in out_dir/history.jsonl.
RESUME_SAFE_CHANGES: dict[str, Literal["any", "increase", "ignored"]] = {
    # train longer: the cosine LR schedule (and Stable-SPAM's / LLR's, which follow train.steps)
    # is stretched to the new length from the resumed step on
    "train.steps": "increase",
    "train.eval_every": "any",  # cadences: what is logged and saved when, not what is trained
    "train.save_every": "any",
    "train.log_every": "any",
    "train.keep_last": "any",
    "train.out_dir": "any",  # the run folder was moved or copied
    # how the processes share the work, not what is trained: a checkpoint of either parallelism
    # resumes under the other (train.batch_size / grad_accum may change with the number of
    # processes if the global batch stays the same: layerwise.train.pretrain)
    "train.parallelism": "any",
    "train.activation_checkpointing": "any",
    "train.compile": "any",
    "train.resume": "ignored",
    "train.overwrite": "ignored",
    "data.cache_dir": "any",  # caches are keyed by content: another cache holds the same data
}


_UNSET = object()  # a field one of two configurations does not have (model.overrides keys)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(
    stored: PretrainConfig, new: PretrainConfig
) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """(allowed, refused) differences `{dotted field: (stored value, new value)}` between the
    configuration a checkpoint was written with and the one resuming it (`RESUME_SAFE_CHANGES`);
    a field only one of them has (a `model.overrides` key) is None on the other side."""
    old, now = _flatten(stored.to_dict()), _flatten(new.to_dict())
    allowed, refused = {}, {}
    for key in sorted(old.keys() | now.keys()):
        before, after = old.get(key, _UNSET), now.get(key, _UNSET)
        if before == after:
            continue
        rule = RESUME_SAFE_CHANGES.get(key)
        if rule == "ignored":
            continue
        ok = rule == "any" or (
            rule == "increase" and _UNSET not in (before, after) and after >= before
        )
        shown = tuple(None if v is _UNSET else v for v in (before, after))
        (allowed if ok else refused)[key] = shown
    return allowed, refused
