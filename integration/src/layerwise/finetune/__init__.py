"""Fine-tuning pipeline: `method: full | lora | lift | seft` on instruction / answer jsonl, with
`objective: ntp` (next token), `mdm` (masked-diffusion SFT, LLaDA's loss), `kd` (distillation) or
`grpo` (RL) through the `Objective` protocol; resumable runs (`train.save_every`,
`train.resume`); stage pipelines (`stages:`, `PipelineConfig`, `run_pipeline`); NAP's
independent-trajectory SFT data (`nap_data`)."""

from layerwise.finetune.config import (
    METHODS,
    OBJECTIVES,
    FinetuneConfig,
    FinetuneDataConfig,
    FinetuneEvalConfig,
    FinetuneModelConfig,
    FinetuneScheduleConfig,
    FinetuneTrainConfig,
    LoraConfig,
)
from layerwise.finetune.instruction_data import (
    PROMPT,
    collate,
    encode_examples,
    format_prompt,
    read_jsonl,
)
from layerwise.finetune.nap_data import (
    arithmetic_nap_records,
    long_cot_target,
    nap_record,
    nap_target,
    parse_nap_target,
    structure_tokens,
)
from layerwise.finetune.objectives import Objective, ObjectiveContext, objective_generator
from layerwise.finetune.pipeline import (
    RESUME_SAFE_CHANGES,
    FinetuneResult,
    build_method,
    finetune,
    linear_warmup_decay,
    mdm_sft_loss,
    merged_model,
)
from layerwise.finetune.stages import PipelineConfig, PipelineResult, StageConfig, run_pipeline
from layerwise.finetune.word_problems import generate_word_problems, write_jsonl

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "PROMPT",
    "RESUME_SAFE_CHANGES",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneEvalConfig",
    "FinetuneModelConfig",
    "FinetuneResult",
    "FinetuneScheduleConfig",
    "FinetuneTrainConfig",
    "LoraConfig",
    "Objective",
    "ObjectiveContext",
    "PipelineConfig",
    "PipelineResult",
    "StageConfig",
    "arithmetic_nap_records",
    "build_method",
    "collate",
    "encode_examples",
    "finetune",
    "format_prompt",
    "generate_word_problems",
    "linear_warmup_decay",
    "long_cot_target",
    "mdm_sft_loss",
    "merged_model",
    "nap_record",
    "nap_target",
    "objective_generator",
    "parse_nap_target",
    "read_jsonl",
    "run_pipeline",
    "structure_tokens",
    "write_jsonl",
]
