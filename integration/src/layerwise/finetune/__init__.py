"""Fine-tuning pipeline: `finetune.method: full | lora | lift | seft` on instruction / answer jsonl."""

from layerwise.finetune.config import (
    FinetuneConfig,
    FinetuneDataConfig,
    FinetuneEvalConfig,
    FinetuneMethodConfig,
    FinetuneModelConfig,
    FinetuneOptimConfig,
    FinetuneTrainConfig,
    LiftSection,
    LoraSection,
    PruneSection,
    SeftSection,
)
from layerwise.finetune.instruction_data import (
    PROMPT,
    collate,
    encode_examples,
    format_prompt,
    read_jsonl,
)
from layerwise.finetune.pipeline import FinetuneResult, build_method, finetune, linear_warmup_decay
from layerwise.finetune.word_problems import generate_word_problems, write_jsonl

__all__ = [
    "PROMPT",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneEvalConfig",
    "FinetuneMethodConfig",
    "FinetuneModelConfig",
    "FinetuneOptimConfig",
    "FinetuneResult",
    "FinetuneTrainConfig",
    "LiftSection",
    "LoraSection",
    "PruneSection",
    "SeftSection",
    "build_method",
    "collate",
    "encode_examples",
    "finetune",
    "format_prompt",
    "generate_word_problems",
    "linear_warmup_decay",
    "read_jsonl",
    "write_jsonl",
]
