"""The strategy objects of `generate`: one dataclass per decoding method, its knobs as fields,
and one pydantic config per method that holds the knobs' defaults (the reference code's).

    LLaDA     semi-autoregressive low-confidence / random remasking (the baseline)
    Prophet   LLaDA + early commit on the top-2 logit gap (released rule; anchor-free: ours)
    FastDLLM  confidence-threshold (or factor) parallel decoding, optional prefix / dual KV cache
    Dream     Dream's `origin` / `maskgit_plus` / `topk_margin` / `entropy` algorithms, optional
              semi-autoregressive blocks
    SOAR      parallel commits or a beam search over positions, adaptively (the released code)
    SOARBeam  SOAR's position beam search as the paper describes it (soar_beam.py)
    ElasticCache  attention-drift-triggered, depth-aware KV refresh + sliding window (elastic_cache.py)
    ParallelForced  NAP: a fixed number of commits per step, over independent segments
                    (parallel_forced.py)

    LLaDAConfig(steps=256).build() == LLaDA(steps=256) == make_strategy("llada", steps=256)

The configs (`LLaDAConfig`, `ProphetConfig`, `FastDLLMConfig`, `DreamConfig`, `SOARConfig`,
`SOARBeamConfig`, `ElasticCacheConfig`, `ParallelForcedConfig`; by name in `STRATEGY_CONFIGS`) validate every knob; the dataclasses take their defaults from them and
validate through them. `reference_quirks=True` (where present) reproduces the reference bit for
bit, including what looks like a bug; each class documents what it changes.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from dlm_decode._base import _StrategyConfig, _Validated
from dlm_decode.canvas import Canvas
from dlm_decode.dream import decode_dream
from dlm_decode.early_commit import ProphetRule, StagedThresholds
from dlm_decode.elastic_cache import ElasticCache, ElasticCacheConfig
from dlm_decode.parallel_decoding import decode_parallel
from dlm_decode.parallel_forced import ParallelForced, ParallelForcedConfig
from dlm_decode.remasking import decode_semi_autoregressive
from dlm_decode.soar import decode_soar
from dlm_decode.soar_beam import SOARBeam, SOARBeamConfig
from layerwise_core import ConfigError

__all__ = [
    "SOAR",
    "STRATEGIES",
    "STRATEGY_CONFIGS",
    "Dream",
    "DreamConfig",
    "FastDLLM",
    "FastDLLMConfig",
    "LLaDA",
    "LLaDAConfig",
    "Prophet",
    "ProphetConfig",
    "SOARConfig",
    "Strategy",
    "make_strategy",
]

Remasking = Literal["low_confidence", "random"]
Backend = Literal["auto", "torch", "triton"]  # layerwise_kernels' backends of the fused top-2 op
DreamAlgorithm = Literal["origin", "maskgit_plus", "topk_margin", "entropy"]


class LLaDAConfig(_StrategyConfig):
    """LLaDA's sampler (`ML-GSAI/LLaDA` `generate.py`). Defaults: the released demo call in its
    `main()` (steps 128, block 32, T 0, no CFG, low confidence); `generate()`'s own signature has
    block_length=128, i.e. one block at its gen_length 128. Not LLaDA's Hugging Face model config."""

    steps: int = Field(128, ge=1)  # forwards over all blocks: a multiple of the number of blocks
    block_length: int = Field(32, ge=1)  # gen_length must be a multiple; == gen_length: no blocks
    temperature: float = Field(0.0, ge=0)  # Gumbel-max sampling temperature; 0: argmax
    remasking: Remasking = "low_confidence"  # commit order: p(x0), or uniformly at random
    cfg_scale: float = Field(0.0, ge=0)  # unsupervised classifier-free guidance w (2 NFE per step)
    logits_eos_inf: bool = False  # EOS logit = -inf before sampling (LLaDA App. B.4)
    confidence_eos_eot_inf: bool = False  # positions predicting EOS/EoT are committed last
    reference_quirks: bool = False  # the released code bit for bit (see `LLaDA`)
    backend: Backend = "auto"  # layerwise_kernels backend of the top-2 confidence op

    def build(self) -> LLaDA:
        return LLaDA(**self._options(LLaDA))


class ProphetConfig(LLaDAConfig):
    """Prophet (`pixeli99/Prophet` `generate_earlyexit.py`): LLaDA's knobs plus the early commit."""

    thresholds: StagedThresholds = Field(default_factory=StagedThresholds)  # 7.5 / 5.0 / 2.5
    region: Literal["answer", "block", "masked"] = "answer"  # gap over: answer region (released)
    answer_start: int | None = Field(None, ge=0)  # generation offset of the answer region
    answer_length: int = Field(5, ge=1)  # positions of the answer region (hard-coded 5)
    record_gaps: bool = False  # keep each step's mean gap in `Prophet.gap_history`

    @field_validator("thresholds", mode="before")
    @classmethod
    def _threshold_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            names = [f.name for f in dataclasses.fields(StagedThresholds)]
            for key in value:
                if key not in names:
                    close = difflib.get_close_matches(str(key), names, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise ValueError(f"unknown threshold {key!r}{hint}: valid names are {names}")
        return value

    def build(self) -> Prophet:
        return Prophet(**self._options(Prophet))


class FastDLLMConfig(_StrategyConfig):
    """Fast-dLLM (`NVlabs/Fast-dLLM` `llada/generate.py`): the released scripts' threshold 0.9."""

    block_length: int = Field(32, ge=1)  # gen_length must be a multiple of it
    threshold: float | None = Field(0.9, ge=0, le=1)  # commit every p >= threshold (and the top 1)
    factor: float | None = Field(None, gt=0)  # factor rule c_(n) >= 1 - f / (n + 1); replaces it
    steps: int | None = Field(None, ge=1)  # fixed schedule (no threshold/factor); budget of NFE
    cache: Literal["prefix", "dual"] | None = None  # KV cache of the prompt / prompt + suffix
    temperature: float = Field(0.0, ge=0)  # Gumbel-max sampling temperature; 0: argmax
    remasking: Remasking = "low_confidence"
    reference_quirks: bool = False  # fp64 confidence softmax, the factor rule's last index
    backend: Backend = "auto"  # layerwise_kernels backend of the top-2 confidence op

    @model_validator(mode="after")
    def _some_rule(self) -> FastDLLMConfig:
        if self.threshold is None and self.factor is None and self.steps is None:
            raise ValueError(
                "without threshold or factor the fixed schedule needs steps: set steps (a "
                "multiple of the number of blocks), threshold or factor"
            )
        return self

    def build(self) -> FastDLLM:
        return FastDLLM(**self._options(FastDLLM))


class DreamConfig(_StrategyConfig):
    """Dream's `diffusion_generate`: the defaults of `DreamGenerationConfig`."""

    steps: int = Field(512, ge=1)  # diffusion steps on t = linspace(1, eps, steps + 1)
    alg: DreamAlgorithm = "origin"  # origin: reveal each mask with probability 1 - s/t
    temperature: float = Field(0.0, ge=0)  # 0: argmax
    top_p: float | None = Field(None, gt=0, le=1)  # nucleus sampling
    top_k: int | None = Field(None, ge=1)
    alg_temp: float | None = Field(None, ge=0)  # > 0: positions drawn from softmax(conf / T)
    eps: float = Field(1e-3, gt=0, lt=1)  # last timestep
    block_length: int | None = Field(None, ge=1)  # semi-AR blocks (Fast-dLLM); None: one block

    def build(self) -> Dream:
        return Dream(**self._options(Dream))


class SOARConfig(_StrategyConfig):
    """SOAR (`duterscmy/SOAR` `generate_soar`): the released defaults."""

    steps: int = Field(128, ge=1)  # at most this many forwards: a multiple of the blocks
    block_length: int = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0)
    remasking: Remasking = "low_confidence"
    cfg_scale: float = Field(0.0, ge=0)  # classifier-free guidance w (2 NFE per step)
    confidence_threshold: float = Field(0.95, ge=0, le=1)  # p above it: a parallel commit
    min_parallel_tokens: int = Field(1, ge=1)  # confident positions needed for a parallel commit
    max_parallel_tokens: int = Field(5, ge=1)  # most positions one parallel commit takes
    max_beam_size: int = Field(2, ge=1)  # beams (positions branched into) otherwise

    @model_validator(mode="after")
    def _parallel_range(self) -> SOARConfig:
        if self.min_parallel_tokens > self.max_parallel_tokens:
            raise ValueError(
                f"min_parallel_tokens {self.min_parallel_tokens} exceeds max_parallel_tokens "
                f"{self.max_parallel_tokens}: lower it or raise max_parallel_tokens"
            )
        return self

    def build(self) -> SOAR:
        return SOAR(**self._options(SOAR))


_LLADA, _PROPHET, _FAST = LLaDAConfig(), ProphetConfig(), FastDLLMConfig()
_DREAM, _SOAR = DreamConfig(), SOARConfig()


@dataclass
class LLaDA(_Validated):
    """LLaDA's sampler (Nie et al. 2025). `steps` over all blocks; `block_length == gen_length` is
    pure diffusion. `cfg_scale > 0`: unsupervised classifier-free guidance (2 NFE per step).

    reference_quirks: the released `confidence_eos_eot_inf` line (see `decode_semi_autoregressive`),
    the Gumbel noise as exp(z)/(-log u)^T, and the confidence softmax in the logits' dtype (ours
    uses the fused top-2 op in fp32).

    Leftovers (both settings, as released): a position whose prediction was the [MASK] id stays
    masked and remains a candidate in later steps and blocks (only positions right of the current
    block are excluded), so it is re-decoded instead of left in the output.
    """

    config_class: ClassVar[type[_StrategyConfig]] = LLaDAConfig

    steps: int = _LLADA.steps
    block_length: int = _LLADA.block_length
    temperature: float = _LLADA.temperature
    remasking: str = _LLADA.remasking
    cfg_scale: float = _LLADA.cfg_scale
    logits_eos_inf: bool = _LLADA.logits_eos_inf
    confidence_eos_eot_inf: bool = _LLADA.confidence_eos_eot_inf
    reference_quirks: bool = _LLADA.reference_quirks
    backend: str = _LLADA.backend

    @property
    def step_budget(self) -> int:
        return self.steps

    def _early_commit(self, canvas: Canvas) -> ProphetRule | None:
        return None

    def run(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        decode_semi_autoregressive(
            canvas,
            steps=self.steps,
            block_length=self.block_length,
            temperature=self.temperature,
            remasking=self.remasking,
            logits_eos_inf=self.logits_eos_inf,
            confidence_eos_eot_inf=self.confidence_eos_eot_inf,
            reference_quirks=self.reference_quirks,
            early_commit=self._early_commit(canvas),
            generator=generator,
            backend=self.backend,
        )


@dataclass
class Prophet(LLaDA):
    """Prophet early commit (Li et al., arXiv:2508.19982) on top of LLaDA's sampler.

    Released rule (`region="answer"`): mean top-2 logit gap over `answer_length` positions from
    generation offset `answer_start` (anchor them with `generate(..., constraints=...)`, see
    `answer_anchor`); without `answer_start` it never exits, as released. Ours: `region="block"`
    (masked positions of the current block) or `"masked"` (every masked position) need no anchor.
    Rows exit on their own; `reference_quirks=True` lets batch row 0 decide for all rows.
    The exit step of each row is in `GenerationOutput.exit_step`; `record_gaps=True` keeps the
    mean gap of every step in `gap_history`.
    """

    config_class: ClassVar[type[_StrategyConfig]] = ProphetConfig

    thresholds: StagedThresholds = field(default_factory=StagedThresholds)
    region: str = _PROPHET.region
    answer_start: int | None = _PROPHET.answer_start
    answer_length: int = _PROPHET.answer_length
    record_gaps: bool = _PROPHET.record_gaps
    gap_history: list[tuple[int, torch.Tensor]] = field(default_factory=list, repr=False)

    def _early_commit(self, canvas: Canvas) -> ProphetRule:
        start = self.answer_start
        if self.region == "answer" and start is not None and not 0 <= start < canvas.gen_length:
            raise ValueError(
                f"answer_start {start} is outside the generation region [0, {canvas.gen_length})"
            )
        self.gap_history.clear()
        return ProphetRule(
            thresholds=self.thresholds,
            region=self.region,
            answer_start=self.answer_start,
            answer_length=self.answer_length,
            reference_quirks=self.reference_quirks,
            history=self.gap_history if self.record_gaps else None,
        )


@dataclass
class FastDLLM(_Validated):
    """Fast-dLLM (Wu et al., arXiv:2505.22618): threshold (default 0.9) or factor parallel
    decoding per block (a factor, when given, replaces the threshold, as released),
    `cache=None | "prefix" | "dual"`. With neither threshold nor factor the
    fixed LLaDA schedule runs with `steps` (the step budget of the speed-up; default gen_length).

    reference_quirks: fp64 confidence softmax (ours: the fused fp32 op) and the factor rule's
    last-index acceptance.

    A block loops until it is decoded, so no [MASK] leftover (a position whose prediction was the
    [MASK] id) outlives its block. Ours never commits [MASK] (the best other token instead); with
    reference_quirks a model stuck on [MASK] (the released loop never ends) raises a RuntimeError
    after block_length + 1 passes of a block.
    NFE with a cache: one refresh pass per block plus the cached passes until the
    block is decoded; the released loops run one more cached pass in a block that the refresh
    pass decoded completely (see `dlm_decode.parallel_decoding._decode_with_cache`).
    """

    config_class: ClassVar[type[_StrategyConfig]] = FastDLLMConfig

    block_length: int = _FAST.block_length
    threshold: float | None = _FAST.threshold
    factor: float | None = _FAST.factor
    steps: int | None = _FAST.steps
    cache: str | None = _FAST.cache
    temperature: float = _FAST.temperature
    remasking: str = _FAST.remasking
    reference_quirks: bool = _FAST.reference_quirks
    backend: str = _FAST.backend
    _gen_length: int = field(default=0, init=False, repr=False)

    @property
    def step_budget(self) -> int:
        return self.steps if self.steps is not None else self._gen_length

    def run(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        self._gen_length = canvas.gen_length
        decode_parallel(
            canvas,
            block_length=self.block_length,
            threshold=self.threshold,
            factor=self.factor,
            steps=self.steps,
            cache=self.cache,
            temperature=self.temperature,
            remasking=self.remasking,
            reference_quirks=self.reference_quirks,
            generator=generator,
            backend=self.backend,
        )


@dataclass
class Dream(_Validated):
    """Dream's sampler (`diffusion_generate`): `alg` in origin / maskgit_plus / topk_margin /
    entropy, with temperature, top_p, top_k and alg_temp. Defaults are `DreamGenerationConfig`'s
    (alg='origin', steps=512, T=0); Dream's README demo uses alg='entropy', T=0.2, top_p=0.95.
    Random draws use torch's global RNG in the reference's order (seed with `set_seed`).

    block_length: semi-autoregressive blocks as Fast-dLLM's `generation_utils_block.py` runs
    them (Dream's own code has none): steps / num_blocks steps per block on the time grid
    restarted in each block, only the current block's masks eligible (see `dlm_decode.dream`).
    None (default): one block, Dream's `diffusion_generate`."""

    config_class: ClassVar[type[_StrategyConfig]] = DreamConfig

    steps: int = _DREAM.steps
    alg: str = _DREAM.alg
    temperature: float = _DREAM.temperature
    top_p: float | None = _DREAM.top_p
    top_k: int | None = _DREAM.top_k
    alg_temp: float | None = _DREAM.alg_temp
    eps: float = _DREAM.eps
    block_length: int | None = _DREAM.block_length

    @property
    def step_budget(self) -> int:
        return self.steps

    def run(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        if generator is not None:
            raise ValueError(
                "Dream draws from torch's global RNG, as its reference does: seed it with "
                "layerwise_core.set_seed(...) instead of passing generator="
            )
        decode_dream(
            canvas,
            steps=self.steps,
            alg=self.alg,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            alg_temp=self.alg_temp,
            eps=self.eps,
            block_length=self.block_length,
        )


@dataclass
class SOAR(_Validated):
    """SOAR (arXiv:2602.10953): per step, commit up to `max_parallel_tokens` positions with
    p > `confidence_threshold`, else branch over the top-`max_beam_size` positions; beams scored
    by the sum of committed probabilities. At most `steps` forwards (the released loop)."""

    config_class: ClassVar[type[_StrategyConfig]] = SOARConfig

    steps: int = _SOAR.steps
    block_length: int = _SOAR.block_length
    temperature: float = _SOAR.temperature
    remasking: str = _SOAR.remasking
    cfg_scale: float = _SOAR.cfg_scale
    confidence_threshold: float = _SOAR.confidence_threshold
    min_parallel_tokens: int = _SOAR.min_parallel_tokens
    max_parallel_tokens: int = _SOAR.max_parallel_tokens
    max_beam_size: int = _SOAR.max_beam_size

    @property
    def step_budget(self) -> int:
        return self.steps

    def run(self, canvas: Canvas, generator: torch.Generator | None) -> None:
        decode_soar(
            canvas,
            steps=self.steps,
            block_length=self.block_length,
            temperature=self.temperature,
            remasking=self.remasking,
            confidence_threshold=self.confidence_threshold,
            min_parallel_tokens=self.min_parallel_tokens,
            max_parallel_tokens=self.max_parallel_tokens,
            max_beam_size=self.max_beam_size,
            generator=generator,
        )


Strategy = LLaDA | Prophet | FastDLLM | Dream | SOAR | SOARBeam | ElasticCache | ParallelForced


STRATEGIES: dict[str, type] = {
    "llada": LLaDA,
    "prophet": Prophet,
    "fast_dllm": FastDLLM,
    "dream": Dream,
    "soar": SOAR,
    "soar_beam": SOARBeam,
    "elastic_cache": ElasticCache,
    "parallel_forced": ParallelForced,
}

STRATEGY_CONFIGS: dict[str, type[_StrategyConfig]] = {
    "llada": LLaDAConfig,
    "prophet": ProphetConfig,
    "fast_dllm": FastDLLMConfig,
    "dream": DreamConfig,
    "soar": SOARConfig,
    "soar_beam": SOARBeamConfig,
    "elastic_cache": ElasticCacheConfig,
    "parallel_forced": ParallelForcedConfig,
}


def make_strategy(name: str, **options: Any) -> Strategy:
    """A strategy from its config name (a key of `STRATEGY_CONFIGS`: `llada | prophet | fast_dllm |
    dream | soar | soar_beam | elastic_cache | parallel_forced`) and options, validated by its config: `STRATEGY_CONFIGS[name].from_dict(options).build()`.

    An unknown name or option raises a `ConfigError` (a `ValueError`) naming the closest valid one
    and listing them all; Prophet's `thresholds` may be a mapping (`{"early": 7.5, ...}`).
    """
    config = STRATEGY_CONFIGS.get(name)
    if config is None:
        close = difflib.get_close_matches(str(name), STRATEGY_CONFIGS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"unknown decoding strategy {name!r}{hint}: choose one of {list(STRATEGY_CONFIGS)}"
        )
    return config.from_dict(options).build()
