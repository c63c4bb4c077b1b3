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
from layerwise.finetune.grpo import (
    GRPOConfig,
    GRPOObjective,
    aggregate,
    clipped_surrogate,
    completion_logprobs,
    group_advantages,
    k3_kl,
)
from layerwise.finetune.instruction_data import (
    PROMPT,
    collate,
    encode_examples,
    format_prompt,
    read_jsonl,
)
from layerwise.finetune.kd import KDConfig, KDObjective, forward_kl, generalized_jsd, reverse_kl
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
from layerwise.finetune.reasoning_data import (
    LEVELS,
    generate_reasoning_problems,
    problem_key,
    reasoning_splits,
)
from layerwise.finetune.rewards import (
    completion_text,
    exact_match_reward,
    extract_answer,
    format_bonus,
)
from layerwise.finetune.stages import PipelineConfig, PipelineResult, StageConfig, run_pipeline
from layerwise.finetune.word_problems import generate_word_problems, write_jsonl

__all__ = [
    "LEVELS",
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
    "GRPOConfig",
    "GRPOObjective",
    "KDConfig",
    "KDObjective",
    "LoraConfig",
    "Objective",
    "ObjectiveContext",
    "PipelineConfig",
    "PipelineResult",
    "StageConfig",
    "aggregate",
    "arithmetic_nap_records",
    "build_method",
    "clipped_surrogate",
    "collate",
    "completion_logprobs",
    "completion_text",
    "encode_examples",
    "exact_match_reward",
    "extract_answer",
    "finetune",
    "format_bonus",
    "format_prompt",
    "forward_kl",
    "generalized_jsd",
    "generate_reasoning_problems",
    "generate_word_problems",
    "group_advantages",
    "k3_kl",
    "linear_warmup_decay",
    "long_cot_target",
    "mdm_sft_loss",
    "merged_model",
    "nap_record",
    "nap_target",
    "objective_generator",
    "parse_nap_target",
    "problem_key",
    "read_jsonl",
    "reasoning_splits",
    "reverse_kl",
    "run_pipeline",
    "structure_tokens",
    "write_jsonl",
]
