"""Fine-tuning pipeline: `method: full | lora | lift | seft` on instruction / answer jsonl."""

from layerwise.finetune.config import (
    METHODS,
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
from layerwise.finetune.pipeline import FinetuneResult, build_method, finetune, linear_warmup_decay
from layerwise.finetune.word_problems import generate_word_problems, write_jsonl

__all__ = [
    "METHODS",
    "PROMPT",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneEvalConfig",
    "FinetuneModelConfig",
    "FinetuneResult",
    "FinetuneScheduleConfig",
    "FinetuneTrainConfig",
    "LoraConfig",
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
