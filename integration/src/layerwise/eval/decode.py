"""`layerwise eval decode`: a masked-diffusion LM answers prompts with a dlm-decode strategy.

The `decode:` switch is dlm-decode's strategy config, a tagged choice (`dlm_decode.STRATEGY_CONFIGS`:
`llada | prophet | fast_dllm | dream | soar | soar_beam | elastic_cache | parallel_forced`)
holding the sampler's fields with the reference defaults, e.g. `decode: {name: prophet, steps: 32, block_length: 8}` or `decode=prophet
decode.steps=32` (Prophet without an answer anchor needs `region: block` to exit early, and takes
`thresholds: {early: 7.5, mid: 5.0, late: 2.5}`). The model is any saved
masked-diffusion LM, e.g. the `final/` folder of an `objective: mdm` run. Each answer is the
generation cut at the first EOS; it is scored by exact match (after stripping whitespace) or by its
last number, and every row's NFE, latency and early-commit step are reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from dlm_decode import STRATEGY_CONFIGS, generate
from layerwise.eval.math_generation import math_exact_match
from layerwise.legacy_layout import migrate_decode
from layerwise_core import (
    LayerwiseConfig,
    UsageError,
    pad_token_rows,
    read_json_lines,
    tagged_choice,
)

__all__ = ["DecodeConfig", "DecodeReport", "evaluate_decoding", "read_prompts"]


class DecodeConfig(LayerwiseConfig):
    """How `layerwise eval decode` decodes and scores: the strategy and its fields, the length."""

    decode: tagged_choice(STRATEGY_CONFIGS, default="llada")  # any STRATEGY_CONFIGS name
    gen_length: int = Field(32, ge=1)  # tokens generated after each prompt
    batch_size: int = Field(8, ge=1)
    scorer: Literal["exact", "last_number"] = "exact"
    seed: int = 0  # Gumbel / random-remasking draws

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        # `options:` (the strategy's fields): see layerwise.legacy_layout
        return migrate_decode(data) if isinstance(data, dict) else data


@dataclass
class DecodeReport:
    decode: str  # the strategy's name
    options: dict[str, Any]  # every field of the strategy
    outputs: list[str]
    correct: list[bool] | None  # None without answers
    nfe: list[int]  # model evaluations per row
    exit_step: list[int]  # Prophet's early-commit step, -1 where none
    generated_tokens: int
    wall_s: float
    row_wall_s: list[float] = dataclasses.field(default_factory=list)  # latency of each row

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else sum(self.correct) / max(len(self.correct), 1)

    @property
    def mean_nfe(self) -> float:
        return sum(self.nfe) / max(len(self.nfe), 1)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.wall_s, 1e-12)

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "accuracy": self.accuracy,
            "mean_nfe": self.mean_nfe,
            "tokens_per_second": self.tokens_per_second,
        }


def read_prompts(path: str | Path) -> tuple[list[str], list[str] | None]:
    """JSON lines with "prompt" and, optionally, "answer" (on every line or on none); a mistake
    is a `UsageError` naming the file and the line."""
    numbered = read_json_lines(path, "--prompts")
    for number, row in numbered:
        if not isinstance(row.get("prompt"), str):
            raise UsageError(
                f"{path}:{number}: expected an object with a string 'prompt', got keys "
                f'{sorted(row)}: write {{"prompt": "..."}} on every line'
            )
    rows = [row for _, row in numbered]
    if not rows:
        raise UsageError(f"--prompts {str(path)!r} holds no prompts: add one JSON line per prompt")
    without = [number for number, row in numbered if "answer" not in row]
    if without and len(without) != len(rows):
        raise UsageError(
            f"{path}:{without[0]}: no 'answer' while other lines have one: give an 'answer' on "
            "every line or on none"
        )
    answers = [str(row["answer"]) for row in rows] if not without else None
    return [row["prompt"] for row in rows], answers


def _left_padded(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(not r for r in rows):
        raise UsageError("a prompt encodes to no token: give every prompt some text")
    pad = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if v is not None), 0)
    return pad_token_rows(rows, pad, left=True)


def _score(output: str, answer: str, scorer: str) -> bool:
    if scorer == "exact":
        return output.strip() == answer.strip()
    return math_exact_match(output, answer)


def evaluate_decoding(
    model,
    tokenizer,
    prompts: list[str],
    answers: list[str] | None = None,
    cfg: DecodeConfig | None = None,
) -> DecodeReport:
    """Decode every prompt (batches of `cfg.batch_size`, left-padded) and score the answers."""
    cfg = cfg or DecodeConfig()
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    strategy = cfg.decode.build()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    outputs, nfe, exit_step, tokens, wall, row_wall = [], [], [], 0, 0.0, []
    for start in range(0, len(prompts), cfg.batch_size):
        ids, mask = _left_padded(tokenizer, prompts[start : start + cfg.batch_size])
        out = generate(
            model,
            ids.to(device),
            strategy,
            gen_length=cfg.gen_length,
            attention_mask=mask.to(device),
            stop_at_eos=True,
            generator=generator,
        )
        outputs += out.decode(tokenizer)
        nfe += out.stats.nfe.tolist()
        exit_step += out.exit_step.tolist()
        tokens += int(out.stats.generated_tokens.sum())
        wall += out.stats.wall_s
        row_wall += out.stats.row_wall_s.tolist()
    correct = None
    if answers is not None:
        correct = [_score(o, a, cfg.scorer) for o, a in zip(outputs, answers)]
    options = {k: v for k, v in cfg.decode.to_dict().items() if k != "name"}
    return DecodeReport(
        cfg.decode.name, options, outputs, correct, nfe, exit_step, tokens, wall, row_wall
    )
