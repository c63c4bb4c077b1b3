"""Fine-tuning pipeline: `method: full | lora | lift | seft` on instruction / answer jsonl, with
`objective: ntp` (next token) or `mdm` (masked-diffusion SFT, LLaDA's loss); NAP's
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
from layerwise.finetune.pipeline import (
    FinetuneResult,
    build_method,
    finetune,
    linear_warmup_decay,
    mdm_sft_loss,
)
from layerwise.finetune.word_problems import generate_word_problems, write_jsonl

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "PROMPT",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneEvalConfig",
    "FinetuneModelConfig",
    "FinetuneResult",
    "FinetuneScheduleConfig",
    "FinetuneTrainConfig",
    "LoraConfig",
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
    "nap_record",
    "nap_target",
    "parse_nap_target",
    "read_jsonl",
    "structure_tokens",
    "write_jsonl",
]
