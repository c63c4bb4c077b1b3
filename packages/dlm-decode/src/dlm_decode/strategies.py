"""The strategy objects of `generate`: one dataclass per decoding method, its knobs as fields.

    LLaDA     semi-autoregressive low-confidence / random remasking (the baseline)
    Prophet   LLaDA + early commit on the top-2 logit gap (released rule; anchor-free: ours)
    FastDLLM  confidence-threshold (or factor) parallel decoding, optional prefix / dual KV cache
    Dream     Dream's `origin` / `maskgit_plus` / `topk_margin` / `entropy` algorithms
    SOAR      parallel commits or a beam search over positions, adaptively

Defaults are those of the reference code. `reference_quirks=True` (where present) reproduces the
reference bit for bit, including what looks like a bug; each class documents what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm_decode.canvas import Canvas
from dlm_decode.dream import decode_dream
from dlm_decode.early_commit import ProphetRule, StagedThresholds
from dlm_decode.parallel_decoding import decode_parallel
from dlm_decode.remasking import decode_semi_autoregressive
from dlm_decode.soar import decode_soar

__all__ = [
    "SOAR",
    "STRATEGIES",
    "Dream",
    "FastDLLM",
    "LLaDA",
    "Prophet",
    "Strategy",
    "make_strategy",
]


@dataclass
class LLaDA:
    """LLaDA's sampler (Nie et al. 2025). `steps` over all blocks; `block_length == gen_length` is
    pure diffusion. `cfg_scale > 0`: unsupervised classifier-free guidance (2 NFE per step).

    reference_quirks: the released `confidence_eos_eot_inf` line (see `decode_semi_autoregressive`),
    the Gumbel noise as exp(z)/(-log u)^T, and the confidence softmax in the logits' dtype (ours
    uses the fused top-2 op in fp32).
    """

    steps: int = 128
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"  # or "random"
    cfg_scale: float = 0.0
    logits_eos_inf: bool = False  # EOS logit = -inf before sampling (LLaDA App. B.4)
    confidence_eos_eot_inf: bool = False  # positions predicting EOS/EoT are committed last
    reference_quirks: bool = False
    backend: str = "auto"  # layerwise_kernels backend of the top-2 confidence op

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

    thresholds: StagedThresholds = field(default_factory=StagedThresholds)
    region: str = "answer"
    answer_start: int | None = None
    answer_length: int = 5
    record_gaps: bool = False
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
class FastDLLM:
    """Fast-dLLM (Wu et al., arXiv:2505.22618): threshold (default 0.9) or factor parallel
    decoding per block (a factor, when given, replaces the threshold, as released),
    `cache=None | "prefix" | "dual"`. With neither threshold nor factor the
    fixed LLaDA schedule runs with `steps` (the step budget of the speed-up; default gen_length).

    reference_quirks: fp64 confidence softmax (ours: the fused fp32 op) and the factor rule's
    last-index acceptance.
    """

    block_length: int = 32
    threshold: float | None = 0.9
    factor: float | None = None
    steps: int | None = None
    cache: str | None = None
    temperature: float = 0.0
    remasking: str = "low_confidence"
    reference_quirks: bool = False
    backend: str = "auto"
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
class Dream:
    """Dream's sampler (`diffusion_generate`): `alg` in origin / maskgit_plus / topk_margin /
    entropy, with temperature, top_p, top_k and alg_temp. Defaults are `DreamGenerationConfig`'s
    (alg='origin', steps=512, T=0); Dream's README demo uses alg='entropy', T=0.2, top_p=0.95.
    Random draws use torch's global RNG in the reference's order (seed with `set_seed`)."""

    steps: int = 512
    alg: str = "origin"
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    eps: float = 1e-3

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
        )


@dataclass
class SOAR:
    """SOAR (arXiv:2602.10953): per step, commit up to `max_parallel_tokens` positions with
    p > `confidence_threshold`, else branch over the top-`max_beam_size` positions; beams scored
    by the sum of committed probabilities. At most `steps` forwards (the released loop)."""

    steps: int = 128
    block_length: int = 32
    temperature: float = 0.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    confidence_threshold: float = 0.95
    min_parallel_tokens: int = 1
    max_parallel_tokens: int = 5
    max_beam_size: int = 2

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


Strategy = LLaDA | Prophet | FastDLLM | Dream | SOAR


STRATEGIES: dict[str, type] = {
    "llada": LLaDA,
    "prophet": Prophet,
    "fast_dllm": FastDLLM,
    "dream": Dream,
    "soar": SOAR,
}


def make_strategy(name: str, **options) -> Strategy:
    """A strategy from its config name (`decode: llada | prophet | fast_dllm | dream | soar`)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown decoding strategy {name!r}: choose one of {list(STRATEGIES)}"
        ) from None
    return cls(**options)
