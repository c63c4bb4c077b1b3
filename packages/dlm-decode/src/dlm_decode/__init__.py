"""dlm-decode: decoding for masked diffusion language models.

    from dlm_decode import generate, LLaDA, Prophet, FastDLLM, Dream, SOAR
    out = generate(model, input_ids, Prophet(steps=256, block_length=32, answer_start=204),
                   gen_length=256, constraints=anchor)
    out.sequences, out.stats.nfe, out.exit_step
    make_strategy("prophet", steps=256, region="block")  # by name, validated by ProphetConfig

LLaDA (arXiv:2502.09992) and Dream (arXiv:2508.15487) samplers, Prophet early commit
(arXiv:2508.19982), Fast-dLLM parallel decoding and KV caches (arXiv:2505.22618), SOAR
(arXiv:2602.10953) with the released loop and the paper's position beam search, Elastic-Cache
(arXiv:2510.14973), NAP parallel-forced decoding (arXiv:2602.23225), over one adapter for
LLaDA-style and Dream-style (shifted) models and transformers' DiffusionGemma; native LLaDA and
Dream model classes (`dlm_decode.models`, registered with the Auto classes on import).
"""

from dlm_decode.__about__ import __version__
from dlm_decode.adapters import (
    DREAM_SPECIAL_IDS,
    LLADA_SPECIAL_IDS,
    MaskedDiffusionLM,
    align_logits,
    as_masked_diffusion_lm,
    is_native,
    load_masked_diffusion_lm,
)
from dlm_decode.canvas import StepEvent
from dlm_decode.counters import DecodeStats
from dlm_decode.diffusion_gemma import block_causal_logits, noise_tokens
from dlm_decode.dream import dream_sample_tokens, dream_transfer_count
from dlm_decode.early_commit import ProphetRule, StagedThresholds, answer_anchor, top2_logit_gap
from dlm_decode.elastic_cache import (
    ElasticCache,
    ElasticCacheConfig,
    attention_similarity,
    decode_elastic_cache,
)
from dlm_decode.generate import GenerationOutput, check_decodable, generate
from dlm_decode.guidance import guided_logits, unconditional_input
from dlm_decode.kv_cache import BlockKVCache
from dlm_decode.models import DreamConfig as DreamModelConfig
from dlm_decode.models import DreamModel, LLaDAModelLM
from dlm_decode.models import LLaDAConfig as LLaDAModelConfig
from dlm_decode.parallel_decoding import factor_rule, threshold_rule
from dlm_decode.parallel_forced import ParallelForced, ParallelForcedConfig, decode_parallel_forced
from dlm_decode.remasking import gumbel_argmax, select_top_k, transfer_schedule
from dlm_decode.soar_beam import SOARBeam, SOARBeamConfig, decode_soar_beam
from dlm_decode.strategies import (
    SOAR,
    STRATEGIES,
    STRATEGY_CONFIGS,
    Dream,
    DreamConfig,
    FastDLLM,
    FastDLLMConfig,
    LLaDA,
    LLaDAConfig,
    Prophet,
    ProphetConfig,
    SOARConfig,
    Strategy,
    make_strategy,
)

__all__ = [
    "DREAM_SPECIAL_IDS",
    "LLADA_SPECIAL_IDS",
    "SOAR",
    "STRATEGIES",
    "STRATEGY_CONFIGS",
    "BlockKVCache",
    "DecodeStats",
    "Dream",
    "DreamConfig",
    "DreamModel",
    "DreamModelConfig",
    "ElasticCache",
    "ElasticCacheConfig",
    "FastDLLM",
    "FastDLLMConfig",
    "GenerationOutput",
    "LLaDA",
    "LLaDAConfig",
    "LLaDAModelConfig",
    "LLaDAModelLM",
    "MaskedDiffusionLM",
    "ParallelForced",
    "ParallelForcedConfig",
    "Prophet",
    "ProphetConfig",
    "ProphetRule",
    "SOARBeam",
    "SOARBeamConfig",
    "SOARConfig",
    "StagedThresholds",
    "StepEvent",
    "Strategy",
    "__version__",
    "align_logits",
    "answer_anchor",
    "as_masked_diffusion_lm",
    "attention_similarity",
    "block_causal_logits",
    "check_decodable",
    "decode_elastic_cache",
    "decode_parallel_forced",
    "decode_soar_beam",
    "dream_sample_tokens",
    "dream_transfer_count",
    "factor_rule",
    "generate",
    "guided_logits",
    "gumbel_argmax",
    "is_native",
    "load_masked_diffusion_lm",
    "make_strategy",
    "noise_tokens",
    "select_top_k",
    "threshold_rule",
    "top2_logit_gap",
    "transfer_schedule",
    "unconditional_input",
]
