"""The training-objective interface of `layerwise finetune` (issue 23): what `objective: kd` and
`objective: grpo` implement (`layerwise.finetune.kd`, `layerwise.finetune.grpo`).

The fine-tuning loop builds the objective from its config (`cfg.objective.build()`), calls
`setup(ctx)` once before training, then for every micro-batch takes
`records_per_micro_batch(batch_size)` records in the run's data order, collates them (prompt +
answer tensors) and calls `loss(model, records, batch, step, micro)`; the loss is scaled by
1 / grad_accum and back-propagated by the loop. `state_dict` / `load_state_dict` carry whatever
the objective must keep across a checkpoint (exact resume).

Two optional methods (the loop calls them when present; `consumes_records` and `begin_step` here
apply the defaults):

- `consumes_records(step) -> bool` (default True): False for an optimizer step that takes no
  records from the data order: the loop passes `records=[]` and `batch={}` for each of its
  micro-batches. GRPO's `num_iterations` reuse steps (TRL's GRPOTrainer repeats the prompts of a
  generation batch for mu updates, so every record is generated for, once per epoch). With
  `train.epochs` (no `train.steps`), a run lasts until epochs * ceil(records / records per step)
  consuming steps are done, plus the non-consuming steps that follow the last one.
- `begin_step(model, step, records) -> None`: called once per optimizer step, before its
  micro-batches, with every micro-batch's records (`records[micro]`, empty lists on a
  non-consuming step): GRPO samples the completions of the whole accumulated step there, so
  `loss_type: dapo` divides by the completion tokens of the whole step, as TRL does.

Randomness inside `loss` (sampling, on-policy coin flips) must come from generators seeded by
(seed, step, micro), never the global RNG, so that a resumed run equals an uninterrupted one.
`objective_generator` gives such a generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["Objective", "ObjectiveContext", "begin_step", "consumes_records", "objective_generator"]


@dataclass
class ObjectiveContext:
    """What an objective gets once, before training."""

    model: nn.Module  # the model being trained (wrapped: PeftModel / SparseFTModel / plain)
    base_model: nn.Module  # the unwrapped model as loaded (e.g. to copy a frozen reference)
    tokenizer: Any
    device: torch.device
    seed: int
    out_dir: Path  # the stage's folder (cache files there: e.g. seq-KD traces)
    records: list[dict]  # the training records ({instruction, answer, ...} jsonl rows)
    instruction_field: str
    answer_field: str
    max_length: int
    total_steps: int
    prompt_format: str = (
        "alpaca"  # data.prompt_format: build prompts with instruction_data.prompt_text
    )


@runtime_checkable
class Objective(Protocol):
    """A training loss the fine-tuning loop calls per micro-batch (see the module docstring)."""

    def setup(self, ctx: ObjectiveContext) -> None:
        """Load a teacher / reference model, etc."""

    def records_per_micro_batch(self, batch_size: int) -> int:
        """Records one micro-batch consumes: SFT / KD `batch_size`; GRPO `batch_size //
        num_generations` (TRL's batch counts completions)."""

    def loss(
        self, model: nn.Module, records: list[dict], batch: dict[str, Tensor], step: int, micro: int
    ) -> tuple[Tensor, dict[str, float]]:
        """(loss to back-propagate, metrics to log) of one micro-batch; `batch` holds the collated
        prompt + answer tensors (input_ids, attention_mask, labels) of `records`; `step` is the
        0-based optimizer step, `micro` the 0-based micro-batch within it."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the objective (tensors and plain values only)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output on resume."""


def objective_generator(seed: int, step: int, micro: int, device: torch.device | str = "cpu"):
    """A torch.Generator seeded by (seed, step, micro) only: the same draws whether or not the
    run was interrupted and resumed before `step`."""
    mixed = (seed * 1_000_003 + step) * 1_009 + micro
    return torch.Generator(device=device).manual_seed(mixed % (2**63 - 1))


def consumes_records(objective: Objective, step: int) -> bool:
    """Whether optimizer step `step` takes records from the data order (the objective's optional
    `consumes_records(step)`; True without one)."""
    method = getattr(objective, "consumes_records", None)
    return True if method is None else bool(method(step))


def begin_step(
    objective: Objective, model: nn.Module, step: int, records: list[list[dict]]
) -> None:
    """Call the objective's optional `begin_step(model, step, records)` (nothing without one)."""
    method = getattr(objective, "begin_step", None)
    if method is not None:
        method(model, step, records)
