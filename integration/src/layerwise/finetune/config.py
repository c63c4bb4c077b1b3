"""`FinetuneConfig`: a fine-tuning run of a Hugging Face causal LM on instruction / answer jsonl.

    cfg = FinetuneConfig.from_yaml("ft.yaml", overrides=["finetune.method=lift", "optim.lr=2e-4"])

`finetune.method` is the switch through which sparse fine-tuning enters a run (ARCHITECTURE.md):
full | lora (peft) | lift | seft (sparse-ft). Each method has its own section; the others are ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from layerwise.train.config import AdamBetas
from layerwise_core import LayerwiseConfig

__all__ = [
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneEvalConfig",
    "FinetuneMethodConfig",
    "FinetuneModelConfig",
    "FinetuneOptimConfig",
    "FinetuneTrainConfig",
    "LiftSection",
    "LoraSection",
    "PruneSection",
    "SeftSection",
]


class FinetuneModelConfig(LayerwiseConfig):
    path: str = ""  # a local Hugging Face folder with config, weights and tokenizer
    dtype: Literal["float32", "bfloat16"] = "float32"  # dtype of the frozen / trained weights


class FinetuneDataConfig(LayerwiseConfig):
    train: str = ""  # jsonl, one {"instruction": ..., "answer": ...} per line
    eval: str | None = None  # held-out jsonl for the generation-based math evaluation
    instruction_field: str = "instruction"  # key of the question / instruction
    answer_field: str = "answer"  # key of the target text (its last number is the answer)
    max_length: int = Field(256, ge=8)  # prompt + answer tokens kept per example
    max_eval: int | None = Field(None, ge=1)  # evaluate on the first N held-out problems only


class LoraSection(LayerwiseConfig):
    r: int = Field(8, ge=1)  # LoRA rank
    alpha: float = Field(16.0, gt=0)  # scaling alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: every Linear of the decoder blocks


class LiftSection(LayerwiseConfig):
    lora_rank: int = Field(8, ge=1)  # k = (m + n) * lora_rank per matrix: LoRA's parameter count
    filter_rank: int = Field(32, ge=1)  # rank of the approximation whose top-k entries train
    update_interval: int | None = Field(None, ge=1)  # steps between mask refreshes; null: static
    svd: Literal["full", "lowrank"] = "full"
    reference_quirks: bool = False  # official code: smallest entries, refresh at (step + 1) % N
    target_modules: list[str] | None = None


class SeftSection(LayerwiseConfig):
    budget_rank: int = Field(8, ge=1)  # k = (m + n) * budget_rank trainable entries per matrix
    update_interval: int = Field(10, ge=2)  # steps between drop / grow / re-prune
    drop_fraction: float = Field(0.1, gt=0, le=1)
    reprune: Literal["sensitivity", "magnitude"] = "sensitivity"
    pattern: str | None = None  # "2:4" for N:M-pruned models
    target_modules: list[str] | None = None


class PruneSection(LayerwiseConfig):
    method: Literal["none", "magnitude", "wanda", "sparsegpt"] = "none"  # prune before training
    sparsity: float | None = Field(0.5, ge=0, lt=1)
    pattern: str | None = None  # "2:4" ...
    allocation: Literal["uniform", "owl", "deeper_sparser", "earlier_sparser"] = "uniform"
    calibration_sequences: int = Field(32, ge=1)  # training examples used as calibration data


class FinetuneMethodConfig(LayerwiseConfig):
    method: Literal["full", "lora", "lift", "seft"] = "lift"
    lora: LoraSection = Field(default_factory=LoraSection)
    lift: LiftSection = Field(default_factory=LiftSection)
    seft: SeftSection = Field(default_factory=SeftSection)
    prune: PruneSection = Field(default_factory=PruneSection)


class FinetuneOptimConfig(LayerwiseConfig):
    lr: float = Field(2e-4, gt=0, allow_inf_nan=False)  # peak learning rate (LIFT's math setting)
    betas: AdamBetas = (0.9, 0.95)  # each in [0, 1)
    eps: float = Field(1e-6, gt=0, allow_inf_nan=False)  # LIFT's SparseAdamW default
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)  # linear warm-up, then linear decay to 0
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False)


class FinetuneTrainConfig(LayerwiseConfig):
    epochs: int = Field(1, ge=1)  # passes over the training set (unless steps is set)
    steps: int | None = Field(None, ge=1)  # optimizer steps; overrides epochs
    batch_size: int = Field(8, ge=1)  # examples per micro-batch
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    seed: int = Field(0, ge=0)  # data order, LoRA init, SEFT's initial support
    log_every: int = Field(10, ge=1)
    out_dir: str = "runs/finetune"  # metrics.jsonl, config.yaml, adapter/ or final/, eval.json
    save: bool = True  # write the adapter (lora / lift / seft) or the full model
    overwrite: bool = False  # replace a run already in out_dir (deletes it); else it is refused


class FinetuneEvalConfig(LayerwiseConfig):
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1)


class FinetuneConfig(LayerwiseConfig):
    model: FinetuneModelConfig = Field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = Field(default_factory=FinetuneDataConfig)
    finetune: FinetuneMethodConfig = Field(default_factory=FinetuneMethodConfig)
    optim: FinetuneOptimConfig = Field(default_factory=FinetuneOptimConfig)
    train: FinetuneTrainConfig = Field(default_factory=FinetuneTrainConfig)
    eval: FinetuneEvalConfig = Field(default_factory=FinetuneEvalConfig)
