"""`FinetuneConfig`: a fine-tuning run of a Hugging Face causal LM on instruction / answer jsonl.

    cfg = FinetuneConfig.from_yaml("ft.yaml", overrides=["method=seft", "optimizer.lr=2e-4"])

The method and the pruning before it are sparse-ft's own configs, nested as a tagged choice
(`method: {name: lift, lora_rank: 128, ...}`, or just `method: lift`):

    method      full | lora: LoraConfig (peft's fields) | lift: sparse_ft.LiftConfig
                | seft: sparse_ft.SeftConfig
    prune       sparse_ft.PruneConfig                     none | magnitude | wanda | sparsegpt
    optimizer   adamw: layerwise_core.AdamWConfig
    objective   ntp (next token, the answer's tokens) | mdm (masked diffusion SFT, LLaDA's)
                | kd: finetune.kd.KDConfig (distillation from a teacher: logit / gkd / seq)
                | grpo: finetune.grpo.GRPOConfig (group-relative RL with an exact-match reward)

`train.save_every` writes a checkpoint (trainable weights, optimizer, scheduler, data order,
objective state, RNG) every N optimizer steps; `train.resume=true` continues the run in
`train.out_dir` from its latest checkpoint, bitwise as if it had never stopped (on CPU).
A list of such runs, each starting from the previous one's merged model, is a
`layerwise.finetune.stages.PipelineConfig` (`stages:`).

Every default of a method is its package's (a test compares them), so a run states the values
of its paper (LIFT's math setting: lr 2e-4, betas [0.9, 0.95], eps 1e-6, weight decay 0). The
old layout (`finetune: {method, lift, ...}`, `optim:`) is migrated with a FutureWarning
(`layerwise.legacy_layout`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from layerwise.finetune.grpo import GRPOConfig
from layerwise.finetune.kd import KDConfig
from layerwise.legacy_layout import migrate_finetune
from layerwise_core import AdamWConfig, LayerwiseConfig, tagged_choice
from sparse_ft import LiftConfig, PruneConfig, SeftConfig

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneEvalConfig",
    "FinetuneModelConfig",
    "FinetuneScheduleConfig",
    "FinetuneTrainConfig",
    "LoraConfig",
]


class FinetuneModelConfig(LayerwiseConfig):
    """The model to fine-tune."""

    path: str = ""  # a local Hugging Face folder with config, weights and tokenizer
    dtype: Literal["float32", "bfloat16"] = "float32"  # dtype of the frozen / trained weights


class FinetuneDataConfig(LayerwiseConfig):
    """The instruction / answer files."""

    train: str = ""  # jsonl, one {"instruction": ..., "answer": ...} per line
    eval: str | None = None  # held-out jsonl for the generation-based math evaluation
    instruction_field: str = "instruction"  # key of the question / instruction
    answer_field: str = "answer"  # key of the target text (its last number is the answer)
    max_length: int = Field(256, ge=8)  # prompt + answer tokens kept per example
    max_eval: int | None = Field(None, ge=1)  # evaluate on the first N held-out problems only
    # the prompt of training (SFT / KD encoding, GRPO and KD generation) and of the evaluation:
    # alpaca: the LIFT / math_10k template; chat: the tokenizer's chat template, the instruction as
    # one user turn plus the assistant's generation prompt (a tokenizer without one is refused)
    prompt_format: Literal["alpaca", "chat"] = "alpaca"


class LoraConfig(LayerwiseConfig):
    """LoRA through peft (an optional dependency, so no config class of its own is imported
    here): the fields of `peft.LoraConfig` that layerwise passes on, with peft's defaults (a
    test compares them when peft is installed); `bias="none"`."""

    r: int = Field(8, ge=1)  # LoRA rank
    lora_alpha: float = Field(8.0, gt=0)  # scaling lora_alpha / r
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: every Linear of the decoder blocks

    def build(self, model_targets: list[str]) -> Any:
        """The `peft.LoraConfig` (`model_targets`: the modules to adapt when none are set)."""
        try:
            from peft import LoraConfig as PeftLoraConfig
        except ImportError:
            raise ImportError("method=lora needs peft: pip install peft") from None
        return PeftLoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules or model_targets,
            bias="none",
        )


# full: every weight trains; lora: peft; lift / seft: sparse-ft (arXiv 2506.00772 / 2505.24037)
METHODS = {"full": None, "lora": LoraConfig, "lift": LiftConfig, "seft": SeftConfig}


# ntp: next-token loss on the answer; mdm: LLaDA's masked-diffusion SFT loss (train/mdm.py) on a
# bidirectional model whose config has mask_token_id (prompt never masked, EOS padding trained);
# kd / grpo: configs whose build() returns a `finetune.objectives.Objective` the loop calls
OBJECTIVES = {"ntp": None, "mdm": None, "kd": KDConfig, "grpo": GRPOConfig}


class FinetuneScheduleConfig(LayerwiseConfig):
    """Linear warm-up over a share of the steps, then linear decay to 0 (LIFT's setup)."""

    warmup_ratio: float = Field(0.03, ge=0, lt=1)


class FinetuneTrainConfig(LayerwiseConfig):
    """How the run trains: length, batch, the run folder, clipping."""

    epochs: int = Field(1, ge=1)  # passes over the training set (unless steps is set)
    steps: int | None = Field(None, ge=1)  # optimizer steps; overrides epochs
    batch_size: int = Field(8, ge=1)  # examples per micro-batch
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    seed: int = Field(0, ge=0)  # data order, LoRA init
    log_every: int = Field(10, ge=1)
    out_dir: str = "runs/finetune"  # metrics.jsonl, config.yaml, adapter/ or final/, eval.json
    save: bool = True  # write the adapter (lora / lift / seft) or the full model
    overwrite: bool = False  # replace a run already in out_dir (deletes it); else it is refused
    save_every: int | None = Field(None, ge=1)  # checkpoint every N optimizer steps; null: none
    resume: bool = False  # continue the run in out_dir from its latest checkpoint (if any)
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False)  # max gradient norm; null: none


class FinetuneEvalConfig(LayerwiseConfig):
    """The generation-based math evaluation after training (`layerwise.eval.math_generation`;
    its prompts are `data.prompt_format`'s, as in training). Greedy accuracy always; `samples` > 0
    adds pass@k of that many sampled completions per problem; records with `level_field` are
    also scored per level."""

    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)
    # last_number: LIFT's last-number match; marker: the number after the last `#### ` (spec §4)
    extract: Literal["last_number", "marker"] = "last_number"
    samples: int = Field(0, ge=0)  # sampled completions per problem for pass@k; 0: greedy only
    pass_k: list[int] = Field(
        default_factory=list
    )  # the k of pass@k (each <= samples); []: samples
    temperature: float = Field(1.0, gt=0)  # sampling (samples > 0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0: off (TRL's convention)
    seed: int = Field(0, ge=0)  # seeds the sampled completions (the caller's RNG is left alone)
    level_field: str = "level"  # record key of the difficulty level (per-level scores)

    @model_validator(mode="after")
    def _pass_k_within_samples(self) -> FinetuneEvalConfig:
        if self.pass_k and not self.samples:
            raise ValueError("eval.pass_k needs eval.samples > 0 (n >= every k): set eval.samples")
        bad = [k for k in self.pass_k if not 1 <= k <= self.samples]
        if bad:
            raise ValueError(
                f"eval.pass_k {bad}: every k must lie in 1..eval.samples={self.samples}"
            )
        return self


class FinetuneConfig(LayerwiseConfig):
    """A fine-tuning run: the model, the data, the method (after optional pruning), how long."""

    model: FinetuneModelConfig = Field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = Field(default_factory=FinetuneDataConfig)
    method: tagged_choice(METHODS, default="lift")  # full | lora | lift | seft
    prune: PruneConfig = Field(default_factory=PruneConfig)  # before training; none by default
    optimizer: tagged_choice({"adamw": AdamWConfig}, default="adamw")
    objective: tagged_choice(OBJECTIVES, default="ntp")  # training loss: ntp | mdm | kd | grpo
    schedule: FinetuneScheduleConfig = Field(default_factory=FinetuneScheduleConfig)
    train: FinetuneTrainConfig = Field(default_factory=FinetuneTrainConfig)
    eval: FinetuneEvalConfig = Field(default_factory=FinetuneEvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        # finetune: {method, lora, lift, seft, prune}, optim:: see layerwise.legacy_layout
        return migrate_finetune(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _mdm_evaluation(self) -> FinetuneConfig:
        if self.objective.name == "mdm" and self.data.eval:
            raise ValueError(
                "objective=mdm trains a masked diffusion LM, which the left-to-right math "
                "evaluation (data.eval) cannot decode: drop data.eval and evaluate the saved "
                "model with `layerwise eval decode`"
            )
        return self

    @model_validator(mode="after")
    def _resume_or_overwrite(self) -> FinetuneConfig:
        if self.train.resume and self.train.overwrite:
            raise ValueError(
                "train.resume and train.overwrite are both true: resume continues the run in "
                "train.out_dir, overwrite deletes it; set one of them"
            )
        return self
