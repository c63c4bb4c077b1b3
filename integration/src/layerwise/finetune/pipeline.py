"""`finetune(cfg)`: full fine-tuning, LoRA (peft), LIFT or SEFT (sparse-ft) of a Hugging Face causal
LM on instruction / answer jsonl, then the generation-based math evaluation.

`objective: mdm` trains a masked diffusion LM (a bidirectional model whose config has
`mask_token_id`) with LLaDA's SFT loss instead (`mdm_sft_loss`); there is no left-to-right
evaluation then (`layerwise eval decode` decodes the saved model).

One optimizer step consumes `batch_size * grad_accum` examples (shuffled each epoch with the run's
seed); each micro-batch's mean answer-token loss is scaled by 1/grad_accum before backward. AdamW
with a linear warm-up over `warmup_ratio` of the steps and a linear decay to zero (LIFT's setup);
after every optimizer step, LIFT refreshes its masks and SEFT updates its topology when due.
Optionally the model is pruned first (`prune`, sparse_ft.PruneConfig), e.g. Wanda 50% then SEFT.

`train.out_dir` is locked for the whole run (a second writer is refused at once), and a folder
that already holds a run (an adapter, a model, metrics) is refused unless `train.overwrite=true`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

import sparse_ft
from layerwise.data.cache import atomic_directory
from layerwise.eval.math_generation import MathEvalResult, evaluate_math_generation
from layerwise.finetune.config import FinetuneConfig
from layerwise.finetune.instruction_data import (
    IGNORE_INDEX,
    collate,
    encode_examples,
    format_prompt,
    read_jsonl,
)
from layerwise.train.divergence import diverged, divergence_error
from layerwise.train.mdm import _mask_and_shift, masked_diffusion_loss
from layerwise.train.metrics import MetricsLog
from layerwise_core import (
    LayerwiseConfig,
    PathExistsError,
    UsageError,
    atomic_write,
    check_tokenizer_fits,
    load_pretrained,
    load_tokenizer_folder,
    lock_run_folder,
    remove_temp_leftovers,
    require_model_folder,
    set_seed,
)

__all__ = ["FinetuneResult", "build_method", "finetune", "linear_warmup_decay", "mdm_sft_loss"]


@dataclass
class FinetuneResult:
    out_dir: Path
    method: str
    steps: int  # optimizer steps done
    trainable_parameters: int
    train_losses: list[float]  # mean answer-token loss of each optimizer step
    wall_s: float
    model: nn.Module  # the trained model (PeftModel / SparseFTModel / plain)
    eval: MathEvalResult | None


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """LR multiplier: (s + 1) / W for s < W, then linearly down to 0 at s = total."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def mdm_sft_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    mask_token_id: int,
    logit_shift: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LLaDA's masked-diffusion SFT loss (arXiv:2502.09992 Eq. 5, `layerwise.train.mdm`) of a
    collated batch: the prompt (the leading labels == -100) is never masked, each answer is
    averaged over its length, and the right padding, which must be EOS, counts as answer (LLaDA's
    SFT guidelines: EOS padding is trained, so the model learns to end). No attention mask, as
    LLaDA trains."""
    prompt_lengths = (batch["labels"] == IGNORE_INDEX).long().cumprod(1).sum(1)
    return masked_diffusion_loss(
        model,
        batch["input_ids"],
        mask_token_id,
        logit_shift=logit_shift,
        prompt_lengths=prompt_lengths,
        generator=generator,
    )


def build_method(
    model: nn.Module, method: LayerwiseConfig, seed: int
) -> tuple[nn.Module, list[nn.Parameter], Callable | None]:
    """(model to train, parameters for the optimizer, hook to call after each optimizer step) of
    `method` (the `method:` choice: full, LoRA through peft, or sparse-ft's LIFT / SEFT config)."""
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, list(model.parameters()), None
    if method.name == "lora":
        from peft import get_peft_model  # optional dependency (LoraConfig.build names it)

        peft_config = method.build(sparse_ft.target_linear_names(model))
        torch.manual_seed(seed)  # LoRA's A init
        wrapped = get_peft_model(model, peft_config)
        return wrapped, [p for p in wrapped.parameters() if p.requires_grad], None
    wrapped = sparse_ft.get_sparse_model(model, method)  # LiftConfig / SeftConfig
    return wrapped, list(wrapped.trainable_parameters()), wrapped.after_optimizer_step


def _load(cfg: FinetuneConfig):
    """Model and tokenizer of `model.path`, checked before the weights load: a local folder (a
    hub id is refused, with how to download it) whose tokenizer fits the model's vocabulary."""
    if not cfg.model.path:
        raise UsageError("model.path is empty: point it at a local Hugging Face model folder")
    folder = require_model_folder(cfg.model.path, "model.path")
    tokenizer = load_tokenizer_folder(folder, "model.path", "save the model's tokenizer there")
    check_tokenizer_fits(
        tokenizer,
        folder,
        tokenizer_name=f"the tokenizer of model.path {cfg.model.path!r}",
        fix="save the tokenizer the model was trained with in that folder",
    )
    dtype = getattr(torch, cfg.model.dtype)
    # the Auto classes after importing the saved model type's package (LNS / Mix-LN, CoE); a
    # masked diffusion LM may be registered with AutoModelForMaskedLM only (load_pretrained's pick)
    auto_class = None if cfg.objective.name == "mdm" else AutoModelForCausalLM
    model = load_pretrained(folder, dtype=dtype, auto_class=auto_class)
    return model, tokenizer


# what a fine-tuning run writes into its folder (train.overwrite=true deletes these, nothing else)
_RUN_OUTPUTS = ("adapter", "final", "metrics.jsonl", "eval.json", "config.yaml", "tensorboard")


def _claim_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a fine-tuning run unless `overwrite` (then delete its files);
    call while holding the folder's lock."""
    remove_temp_leftovers(out)
    previous = [name for name in _RUN_OUTPUTS if (out / name).exists()]
    if not previous:
        return
    if not overwrite:
        raise PathExistsError(
            f"{out} already holds a fine-tuning run ({', '.join(previous)}): set "
            "train.overwrite=true to replace it, or choose another train.out_dir"
        )
    doomed = out / ".replaced-run.tmp"  # a temp name: a kill mid-delete is cleared next start
    shutil.rmtree(doomed, ignore_errors=True)
    doomed.mkdir()
    for name in previous:
        os.rename(out / name, doomed / name)
    shutil.rmtree(doomed)


def finetune(
    cfg: FinetuneConfig, *, model: nn.Module | None = None, tokenizer=None
) -> FinetuneResult:
    """Run `cfg`; `model` / `tokenizer` replace loading `cfg.model.path` (already-loaded models).

    Holds the lock of `train.out_dir` throughout; refuses a folder that holds a run unless
    `train.overwrite=true`."""
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then model.path is loaded)")
    with lock_run_folder(cfg.train.out_dir) as out:
        _claim_folder(out, cfg.train.overwrite)
        return _finetune(cfg, model, tokenizer)


def _finetune(cfg: FinetuneConfig, model: nn.Module | None, tokenizer) -> FinetuneResult:
    t0 = time.perf_counter()
    tc = cfg.train
    # every input is read and checked before the model loads and before anything is written
    records = read_jsonl(cfg.data.train, "data.train")
    problems = None
    if cfg.data.eval:
        problems = read_jsonl(cfg.data.eval, "data.eval")[: cfg.data.max_eval]
    if model is None:
        model, tokenizer = _load(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    mdm = cfg.objective.name == "mdm"
    if mdm:  # LLaDA pads SFT answers with EOS and trains on it
        pad_id = tokenizer.eos_token_id
        mask_token_id, logit_shift = _mask_and_shift(model)
        noise = torch.Generator(device=device).manual_seed(tc.seed)
    examples = encode_examples(
        records, tokenizer, cfg.data.instruction_field, cfg.data.answer_field, cfg.data.max_length
    )
    set_seed(tc.seed)
    if cfg.prune.method != "none":  # calibrated on the training examples
        documents = [ids for ids, _ in examples]
        calibration = sparse_ft.packed_calibration(documents, cfg.prune.calibration_sequences, 128)
        cfg.prune.apply(model, calibration)
    wrapped, params, after_step = build_method(model, cfg.method, tc.seed)
    trainable = sum(p.numel() for p in params)
    optimizer = cfg.optimizer.build(params)
    per_step = tc.batch_size * tc.grad_accum
    total = tc.steps or tc.epochs * math.ceil(len(examples) / per_step)
    warmup = int(cfg.schedule.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, warmup, total)
    )
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    log = MetricsLog(out, tensorboard=False)
    generator = torch.Generator().manual_seed(tc.seed)
    order: list[int] = []
    losses: list[float] = []
    clip = tc.grad_clip if tc.grad_clip is not None else math.inf
    wrapped.train()
    for step in range(total):
        step_loss = 0.0
        for _ in range(tc.grad_accum):
            if len(order) < tc.batch_size:
                order += torch.randperm(len(examples), generator=generator).tolist()
            chosen, order = order[: tc.batch_size], order[tc.batch_size :]
            batch = {
                k: v.to(device) for k, v in collate([examples[i] for i in chosen], pad_id).items()
            }
            if mdm:
                loss = mdm_sft_loss(wrapped, batch, mask_token_id, logit_shift, noise)
            else:
                loss = wrapped(**batch).loss
            (loss / tc.grad_accum).backward()
            step_loss += loss.item() / tc.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if diverged(step_loss, grad_norm):  # before the update: never applied, never saved
            raise divergence_error(step + 1, step_loss, grad_norm, "fine-tuning saves at the end")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(optimizer)
        losses.append(step_loss)
        if (step + 1) % tc.log_every == 0 or step + 1 == total:
            recent = losses[-tc.log_every :]
            log.log(
                {
                    "step": step + 1,
                    "split": "train",
                    "loss": sum(recent) / len(recent),
                    "lr": lr,
                    "elapsed_s": round(time.perf_counter() - t0, 3),
                }
            )
    if tc.save:
        _save(wrapped, tokenizer, cfg.method.name, out)
    result_eval = None
    if problems is not None:
        result_eval = evaluate_math_generation(
            wrapped,
            tokenizer,
            problems,
            format_prompt,
            question_field=cfg.data.instruction_field,
            answer_field=cfg.data.answer_field,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
        )
        log.log({"step": total, "split": "eval", "accuracy": result_eval.accuracy})
        with atomic_write(out / "eval.json", "w") as handle:
            json.dump(
                {
                    "accuracy": result_eval.accuracy,
                    "correct": result_eval.correct,
                    "total": result_eval.total,
                    "records": result_eval.records,
                },
                handle,
                indent=1,
            )
    log.close()
    return FinetuneResult(
        out_dir=out,
        method=cfg.method.name,
        steps=total,
        trainable_parameters=trainable,
        train_losses=losses,
        wall_s=time.perf_counter() - t0,
        model=wrapped,
        eval=result_eval,
    )


def _save(model: nn.Module, tokenizer, method: str, out: Path) -> None:
    """The model (full) or adapter, written atomically into `final/` or `adapter/`."""
    with atomic_directory(out / ("final" if method == "full" else "adapter")) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
