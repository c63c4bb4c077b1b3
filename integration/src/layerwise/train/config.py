"""`PretrainConfig`: every knob of a pre-training run, as YAML + `a.b=value` overrides.

    cfg = PretrainConfig.from_yaml("run.yaml", overrides=["train.steps=300", "optimizer.lr=3e-3"])

Methods enter a run through their packages' own configs, nested as *tagged choices* (a mapping
with its `name`, or just the name; `layerwise_core.tagged_choice`):

    model.norm    ln_scaling.NormConfig                      pre_ln | lns | mix_ln | mix_ln+lns
    objective     ntp | meap: meap.MEAPConfig | mdm
    optimizer     adamw: layerwise_core.AdamWConfig | spam: spam_opt.SPAMConfig
                  | stable_spam: spam_opt.StableSPAMConfig
                  | loro: sparse_ft.LOROConfig (needs model.low_rank)
    spectral      none | alphadecay: spectral_opt.AlphaDecayConfig
                  | llr: spectral_opt.LayerwiseLRConfig
    sparsity      sparse_ft.DSTConfig: dynamic sparse training (NeuroTrails' prune / regrow of
                  every Linear / Embedding weight); density 1.0 (the default): dense, off
    model.heads   sparse_ft.HeadsConfig: K heads on a shared backbone (`layerwise.models.config`)

Every default of a method is its package's (a test compares them); the integration owns only how
a run is laid out (data, model size, schedule, train). The old layout (`optim:`, `spam:`,
`spectral_options:`, ...) is migrated with a FutureWarning (`layerwise.legacy_layout`).

`RESUME_SAFE_CHANGES` (below the schema) lists the only fields a resumed run may change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from layerwise.data.config import DataConfig
from layerwise.legacy_layout import migrate_pretrain
from layerwise.models.config import ModelConfig
from layerwise_core import AdamWConfig, LayerwiseConfig, tagged_choice
from meap import MEAPConfig
from spam_opt import SPAMConfig, StableSPAMConfig
from sparse_ft import LOROConfig
from sparse_ft.dst import DSTConfig
from spectral_opt import AlphaDecayConfig, LayerwiseLRConfig

__all__ = [
    "OBJECTIVES",
    "OPTIMIZERS",
    "RESUME_SAFE_CHANGES",
    "SPECTRAL",
    "DataConfig",
    "ModelConfig",
    "PretrainConfig",
    "ScheduleConfig",
    "TrainConfig",
    "resume_changes",
]

# the choices of each switch: name -> the package's config (None: a choice without fields)
# ntp: next-token prediction; meap: MEAP (arXiv 2502.07490), a share of the inputs replaced by
# [MASK], targets clean; mdm: masked diffusion (LLaDA), a bidirectional model (train/mdm.py)
OBJECTIVES = {"ntp": None, "meap": MEAPConfig, "mdm": None}
# every optimizer decays only matrices: param groups from `optimizer.weight_decay`; loro: LORO's
# Riemannian steps on the low-rank factors of model.low_rank (its own param groups, and a restart
# factor on the LR schedule: LOROConfig.param_groups / schedule_factor)
OPTIMIZERS = {
    "adamw": AdamWConfig,
    "spam": SPAMConfig,
    "stable_spam": StableSPAMConfig,
    "loro": LOROConfig,
}
# heavy-tail guided hyper-parameters: AlphaDecay (per-module weight decay), LLR (per-module LR)
SPECTRAL = {"none": None, "alphadecay": AlphaDecayConfig, "llr": LayerwiseLRConfig}


class ScheduleConfig(LayerwiseConfig):
    """The learning-rate schedule: linear warm-up to the optimizer's lr, cosine to a floor
    (`layerwise.train.schedule.warmup_cosine`)."""

    warmup_steps: int = Field(100, ge=0)  # linear warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)  # cosine floor, as a fraction of lr


class TrainConfig(LayerwiseConfig):
    """How the run trains: length, batch, cadences, the run folder, precision, clipping."""

    steps: int = Field(1000, ge=1)  # optimizer steps (the LR schedule spans them)
    batch_size: int = Field(8, ge=1)  # blocks per micro-batch per process
    # context length at a fixed number of tokens per optimizer step: batch_size becomes
    # tokens_per_step / (block_size x grad_accum) (per process); null: batch_size as given
    tokens_per_step: int | None = Field(None, ge=2)
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    block_size: int = Field(128, ge=2)  # tokens per training sequence
    seed: int = Field(0, ge=0)  # model init and data order
    eval_every: int = Field(100, ge=0)  # validate every N steps (0: only at the end)
    # validation scores the first eval_batches * batch_size * world_size blocks; null: all
    eval_batches: int | None = Field(20, ge=1)
    save_every: int = Field(500, ge=0)  # checkpoint every N steps (0: only at the end)
    log_every: int = Field(10, ge=1)  # one metrics record per N steps (mean train loss over them)
    # per-layer output variance of the decoder blocks (`layer_variance/<l>`, `layer_variance/last`
    # in the train record) every N steps, from hooks on the blocks in the training forward;
    # 0: off; a multiple of log_every
    log_layer_variance_every: int = Field(0, ge=0)
    # step checkpoints kept (the newest N; older ones deleted once a newer one is complete);
    # null: keep all
    keep_last: int | None = Field(None, ge=1)
    # metrics.jsonl, config.yaml, history.jsonl, checkpoints/, final/
    out_dir: str = "runs/pretrain"
    resume: bool = False  # continue from out_dir/checkpoints/latest if there is one
    overwrite: bool = False  # replace a run already in out_dir (deletes it); else it is refused
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on a bf16 GPU, else fp32
    # max global gradient norm; null: no clipping
    grad_clip: float | None = Field(1.0, gt=0.0, allow_inf_nan=False)
    # data parallelism over the processes of a launch (torchrun / accelerate launch; train/parallel.py):
    # ddp = replicated model, all-reduced gradients; fsdp2 = parameters, gradients and optimizer
    # states sharded over the processes (torch fully_shard per decoder layer); bf16 via its
    # MixedPrecisionPolicy
    parallelism: Literal["ddp", "fsdp2"] = "ddp"
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward
    compile: bool = False  # torch.compile each decoder layer's forward

    @model_validator(mode="before")
    @classmethod
    def _batch_from_tokens(cls, data: Any) -> Any:
        # tokens_per_step fixes batch_size x block_size x grad_accum: the batch follows the
        # context length (spec studies.md A.8: T in {32, ..., 256} at 4096 tokens per step)
        if not isinstance(data, Mapping) or data.get("tokens_per_step") is None:
            return data
        data = dict(data)
        tokens = int(data["tokens_per_step"])
        block, accum = int(data.get("block_size", 128)), int(data.get("grad_accum", 1))
        if tokens % (block * accum):
            raise ValueError(
                f"train.tokens_per_step={tokens} is not a multiple of train.block_size x "
                f"train.grad_accum = {block * accum}: change one of them"
            )
        batch = tokens // (block * accum)
        if data.get("batch_size") is not None and int(data["batch_size"]) != batch:
            raise ValueError(
                f"train.batch_size={data['batch_size']} disagrees with train.tokens_per_step="
                f"{tokens} / (block_size {block} x grad_accum {accum}) = {batch}: remove "
                "train.batch_size (it follows tokens_per_step) or set train.tokens_per_step=null"
            )
        data["batch_size"] = batch
        return data

    @model_validator(mode="after")
    def _resume_or_overwrite(self) -> TrainConfig:
        if self.resume and self.overwrite:
            raise ValueError(
                "train.resume and train.overwrite are both true: set one (continue the run in "
                "out_dir, or replace it)"
            )
        if self.log_layer_variance_every % self.log_every:
            raise ValueError(
                f"train.log_layer_variance_every={self.log_layer_variance_every} is not a "
                f"multiple of train.log_every={self.log_every}: the variance goes into the train "
                "record, so choose a multiple (or 0 to turn it off)"
            )
        if self.parallelism == "fsdp2" and self.precision == "fp16":
            raise ValueError(
                "train.precision=fp16 needs a gradient scaler, which train.parallelism=fsdp2 does "
                "not run: use train.precision=bf16, or train.parallelism=ddp"
            )
        return self


class PretrainConfig(LayerwiseConfig):
    """A pre-training run: what it trains on, which model, which methods, for how long."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: tagged_choice(OBJECTIVES, default="ntp")  # training loss: ntp | meap | mdm
    optimizer: tagged_choice(OPTIMIZERS, default="adamw")  # adamw | spam | stable_spam | loro
    spectral: tagged_choice(SPECTRAL, default="none")  # none | alphadecay | llr
    # dynamic sparse training (sparse_ft.DynamicSparsity): masks on every Linear / Embedding
    # weight, pruned and regrown every `update_every` updates; density 1.0: dense (off)
    sparsity: DSTConfig = Field(default_factory=DSTConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        # optim:, spam:, spectral_options:, mask_ratio, ...: see layerwise.legacy_layout
        return migrate_pretrain(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _warmup_fits(self) -> PretrainConfig:
        if self.schedule.warmup_steps > self.train.steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) exceeds train.steps "
                f"({self.train.steps}); lower it"
            )
        if self.objective.name == "mdm" and self.model.norm.scheme.startswith("mix_ln"):
            raise ValueError(
                f"model.norm={self.model.norm.scheme} needs a causal Llama, and objective=mdm "
                "trains a bidirectional one: use model.norm=lns or pre_ln with mdm"
            )
        return self

    @model_validator(mode="after")
    def _elas_fits(self) -> PretrainConfig:
        elas = self.model.elas
        if elas and self.objective.name == "mdm":
            raise ValueError(
                "objective=mdm trains a bidirectional Llama, which ELAS (model.mlp=relu2 / "
                "model.low_rank) does not convert: use objective=ntp or meap with ELAS"
            )
        if self.optimizer.name == "loro" and not self.model.low_rank.enabled:
            raise ValueError(
                "optimizer=loro trains low-rank factors and the model has none: set "
                "model.low_rank=R (e.g. 128), or use optimizer=adamw"
            )
        if self.spectral.name != "none" and self.model.low_rank.enabled:
            raise ValueError(
                f"spectral={self.spectral.name} reads the spectra of nn.Linear weights, and "
                "model.low_rank replaces them by factor pairs: use spectral=none with "
                "model.low_rank"
            )
        return self

    @model_validator(mode="after")
    def _neurotrails_fits(self) -> PretrainConfig:
        heads = self.model.heads
        if heads.enabled and self.objective.name != "ntp":
            raise ValueError(
                f"model.heads={heads.count} trains each head on next-token prediction (the sum "
                f"of the heads' losses), not objective={self.objective.name}: use objective=ntp "
                "with model.heads, or model.heads=1"
            )
        if heads.enabled and self.train.log_layer_variance_every:
            raise ValueError(
                f"train.log_layer_variance_every reads one stack of decoder blocks, and "
                f"model.heads={heads.count} has a backbone and {heads.count} heads: set "
                "train.log_layer_variance_every=0 with model.heads"
            )
        if self.sparsity.enabled:
            if self.model.elas:
                raise ValueError(
                    f"sparsity.density={self.sparsity.density} masks nn.Linear / nn.Embedding "
                    "weights, and ELAS (model.mlp=relu2 / model.low_rank) replaces them: set "
                    "sparsity.density=1.0 with ELAS, or model.mlp=dense and model.low_rank=null"
                )
            if self.model.mlp.name in ("moe", "coe"):
                raise ValueError(
                    f"sparsity.density={self.sparsity.density} masks nn.Linear / nn.Embedding "
                    f"weights, not model.mlp={self.model.mlp.name}'s expert tensors (they would "
                    "stay dense): set sparsity.density=1.0 with it, or model.mlp=dense"
                )
        return self


# The fields a resumed run (train.resume=true) may change; any other difference from the
# checkpoint's configuration refuses the resume (layerwise.train.pretrain). "any": any new value;
# "increase": a value >= the stored one; "ignored": how this invocation runs, not what the run
# is. Allowed changes are recorded in out_dir/history.jsonl. `sparsity.*` and `model.heads.*` are
# deliberately absent: the masks, their schedule and the model's heads are what the checkpoint is.
RESUME_SAFE_CHANGES: dict[str, Literal["any", "increase", "ignored"]] = {
    # train longer: the cosine LR schedule (and Stable-SPAM's / LLR's, which follow train.steps)
    # is stretched to the new length from the resumed step on
    "train.steps": "increase",
    "train.eval_every": "any",  # cadences: what is logged and saved when, not what is trained
    "train.save_every": "any",
    "train.log_every": "any",
    "train.log_layer_variance_every": "any",
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
