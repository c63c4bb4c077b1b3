"""`generate(model, input_ids, strategy)`: the one entry point of every sampler.

out = generate(model, input_ids, Prophet(steps=256, block_length=32), gen_length=256)
out.sequences          (B, P + G) prompt and decoded tokens
out.stats.nfe          forward evaluations per row (CFG counted twice)
out.exit_step          Prophet's exit step per row (-1: ran the whole schedule)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dlm_decode.adapters import _KNOWN, MaskedDiffusionLM, as_masked_diffusion_lm
from dlm_decode.canvas import Canvas, StepEvent
from dlm_decode.counters import DecodeStats
from dlm_decode.strategies import LLaDA, Strategy
from layerwise_core import TokenInputs, renamed_kwargs, token_inputs, vocabulary_size

__all__ = ["GenerationOutput", "check_decodable", "generate"]


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # (B, P + G)
    prompt_length: int
    stats: DecodeStats
    exit_step: torch.Tensor  # (B,) Prophet's early-commit step, -1 where none happened

    @property
    def generated(self) -> torch.Tensor:
        """(B, G): the generation region only."""
        return self.sequences[:, self.prompt_length :]

    def decode(self, tokenizer: Any, skip_special_tokens: bool = True) -> list[str]:
        """Texts of the generation region, cut at the first EOS/EoT (the tokens/s definition)."""
        out = []
        for row, length in zip(self.generated.tolist(), self.stats.generated_tokens.tolist()):
            out.append(tokenizer.decode(row[:length], skip_special_tokens=skip_special_tokens))
        return out


def _declares_masked_diffusion(model: nn.Module) -> bool:
    """What the adapters know: a config with `logit_shift` (layerwise's masked-diffusion models
    and any checkpoint that stores it) or a released LLaDA / Dream model type."""
    config = getattr(model, "config", None)
    return getattr(config, "logit_shift", None) is not None or (
        getattr(config, "model_type", None) in _KNOWN
    )


def check_decodable(lm: MaskedDiffusionLM, *, allow_causal: bool = False) -> None:
    """Refuse, before any forward pass, what would fail deep inside a sampler or decode nonsense:

    - a [MASK] id outside [0, vocabulary) (the embedding lookup would fail many frames down);
    - a causal LM (a transformers `...ForCausalLM` that does not declare itself a masked
      diffusion LM): position i never sees the tokens after it, so every masked position is
      predicted from the left context alone. `allow_causal=True` decodes it anyway.
    """
    vocab = vocabulary_size(lm.model)
    # DiffusionGemma's [MASK] is a sentinel past the vocabulary, fed as noise (never embedded).
    sentinel = lm.call_style == "diffusion_gemma"
    if vocab is not None and not sentinel and not 0 <= lm.mask_token_id < vocab:
        raise ValueError(
            f"mask_token_id {lm.mask_token_id} is outside the model's vocabulary [0, {vocab}): "
            "pass the model's [MASK] id (config.mask_token_id; LLaDA uses 126336, Dream 151666)"
        )
    name = type(lm.model).__name__
    causal = name.endswith("ForCausalLM") and not _declares_masked_diffusion(lm.model)
    if causal and not allow_causal:
        raise ValueError(
            f"{name} is a causal LM (each position attends only to the left), not a masked "
            "diffusion LM: decode a masked diffusion LM (LLaDA, Dream, a layerwise objective=mdm "
            "run, or a model whose config sets logit_shift), or pass allow_causal=True to decode "
            "it anyway"
        )


@torch.no_grad()
@renamed_kwargs(prompt_ids="input_ids")
def generate(
    model: nn.Module | MaskedDiffusionLM,
    input_ids: TokenInputs,
    strategy: Strategy | None = None,
    *,
    gen_length: int = 128,
    attention_mask: torch.Tensor | None = None,
    constraints: Mapping[int, int] | None = None,
    stop_at_eos: bool = False,
    callback: Callable[[StepEvent], None] | None = None,
    generator: torch.Generator | None = None,
    mask_token_id: int | None = None,
    logit_shift: int | None = None,
    allow_causal: bool = False,
) -> GenerationOutput:
    """Decode `gen_length` tokens after each prompt with a masked diffusion LM.

    Args:
        model: a transformers model (LLaDA / Dream remote code, or a bidirectional model whose
            config has `mask_token_id` and `logit_shift`) or a `MaskedDiffusionLM`.
        input_ids: the prompts, (B, P) token ids left-padded when lengths differ, or a batch
            mapping with "input_ids" and "attention_mask" (e.g. a tokenizer's output with
            `padding_side="left"`). Formerly `prompt_ids` (deprecated alias).
        strategy: `LLaDA()` (default), `Prophet(...)`, `FastDLLM(...)`, `Dream(...)`, `SOAR(...)`.
        gen_length: tokens to generate (G).
        attention_mask: (B, P), 1 for real prompt tokens, 0 for left padding.
        constraints: {generation offset: token id} forced into the canvas before decoding and
            never masked (Prophet's answer anchor); they count as prompt for guidance.
        stop_at_eos: ours: a row stops as soon as its first EOS/EoT is decoded and everything
            before it is; its remaining masks become EOS (the references decode to the end).
        callback: called with a `StepEvent` after every commit (streaming).
        generator: torch.Generator for Gumbel / random-remasking draws (global RNG when None).
        mask_token_id, logit_shift: override what the model's config says.
        allow_causal: decode a causal LM anyway (e.g. to show how a masked-diffusion sampler
            fails on an autoregressive model); refused by default, see `check_decodable`.

    Raises ValueError up front for a [MASK] id outside the model's vocabulary and for a causal LM.
    """
    input_ids, attention_mask = token_inputs(input_ids, attention_mask, what="generate")
    if input_ids is None:
        raise ValueError("generate: pass the prompts as input_ids (B, P)")
    lm = as_masked_diffusion_lm(model, mask_token_id=mask_token_id, logit_shift=logit_shift)
    check_decodable(lm, allow_causal=allow_causal)
    if lm.block_size is not None and gen_length % lm.block_size:
        raise ValueError(
            f"gen_length {gen_length} must be a multiple of the model's block (canvas) length "
            f"{lm.block_size}: its blocks are aligned to the end of the sequence"
        )
    strategy = LLaDA() if strategy is None else strategy
    cfg_scale = getattr(strategy, "cfg_scale", 0.0)
    canvas = Canvas(
        lm,
        input_ids,
        gen_length,
        attention_mask=attention_mask,
        constraints=constraints,
        cfg_scale=cfg_scale,
        stop_at_eos=stop_at_eos,
        callback=callback,
    )
    strategy.run(canvas, generator)
    return GenerationOutput(
        sequences=canvas.x,
        prompt_length=canvas.prompt_length,
        stats=canvas.stats(strategy.step_budget),
        exit_step=canvas.exit_step.cpu(),
    )
