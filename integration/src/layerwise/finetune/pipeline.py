"""`finetune(cfg)`: full fine-tuning, LoRA (peft), LIFT or SEFT (sparse-ft) of a Hugging Face causal
LM on instruction / answer jsonl, then the generation-based math evaluation.

`objective: mdm` trains a masked diffusion LM (a bidirectional model whose config has
`mask_token_id`) with LLaDA's SFT loss instead (`mdm_sft_loss`); there is no left-to-right
evaluation then (`layerwise eval decode` decodes the saved model). `objective: kd | grpo` builds a
`finetune.objectives.Objective` (distillation, GRPO) that the loop calls per micro-batch.

One optimizer step consumes `batch_size * grad_accum` examples (shuffled each epoch with the run's
seed; GRPO: `batch_size // num_generations` prompts per micro-batch, as TRL counts completions,
and none on its `num_iterations` reuse steps: `objectives.consumes_records`);
each micro-batch's loss is scaled by 1/grad_accum before backward. AdamW with a linear warm-up
over `warmup_ratio` of the steps and a linear decay to zero (LIFT's setup); after every optimizer
step, LIFT refreshes its masks and SEFT updates its topology when due. Optionally the model is
pruned first (`prune`, sparse_ft.PruneConfig), e.g. Wanda 50% then SEFT.

Prompts follow `data.prompt_format` (Alpaca, or the tokenizer's chat template: refused when the
tokenizer has none) in training, in the objectives' sampling and in the evaluation after training
(`eval.*`: greedy, sampled pass@k, per-level scores; eval.json holds `MathEvalResult.summary()`
and the per-problem records).

Checkpoints (`train.save_every`): `out_dir/checkpoints/step_N/` (written into a temp folder and
renamed when complete; `checkpoints/latest` names the newest; older ones are deleted after)

    trainable.safetensors   full: every weight; lora: the adapter's trainable tensors;
                            lift / seft: sparse_ft's saved layout (indices, values, touched)
    optimizer.pt  scheduler.pt  rng.pt  data.pt (data order, generators)  objective.pt
    trainer_state.json      step, losses, logged metrics, the method's counters

`train.resume=true` loads the latest one (refusing a configuration that changed outside
`RESUME_SAFE_CHANGES`), truncates metrics.jsonl after its step and continues: on CPU the resumed
run equals an uninterrupted one bitwise. Everything loads with weights_only / safetensors. A
pipeline stage (`merged_final`) deletes its checkpoints once its final/ is written.

`train.out_dir` is locked for the whole run (a second writer is refused at once), and a folder
that already holds a run (an adapter, a model, metrics) is refused unless `train.overwrite=true`
or `train.resume=true`.
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
from typing import Any

import torch
import yaml
from torch import nn
from transformers import AutoModelForCausalLM

import sparse_ft
from layerwise.data.cache import atomic_directory
from layerwise.eval.math_generation import MathEvalResult, evaluate_math_generation
from layerwise.finetune.config import FinetuneConfig
from layerwise.finetune.instruction_data import (
    IGNORE_INDEX,
    check_prompt_format,
    collate,
    encode_examples,
    prompt_text,
    read_jsonl,
)
from layerwise.finetune.objectives import (
    Objective,
    ObjectiveContext,
    begin_step,
    consumes_records,
)
from layerwise.train.checkpoint import (
    checkpoint_steps,
    latest_checkpoint,
    read_checkpoint_file,
    recover_checkpoints,
)
from layerwise.train.divergence import diverged, divergence_error
from layerwise.train.mdm import _mask_and_shift, masked_diffusion_loss
from layerwise.train.metrics import MetricsLog
from layerwise_core import (
    CheckpointFileError,
    LayerwiseConfig,
    PathExistsError,
    UsageError,
    atomic_write,
    check_tokenizer_fits,
    get_rng_state,
    load_pretrained,
    load_safetensors,
    load_tokenizer_folder,
    lock_run_folder,
    remove_temp_leftovers,
    require_model_folder,
    save_safetensors,
    set_rng_state,
    set_seed,
    torch_load_safe,
    torch_save_atomic,
)
from sparse_ft.seft import GrowCollector, PruneCollector

__all__ = [
    "RESUME_SAFE_CHANGES",
    "FinetuneResult",
    "build_method",
    "config_changes",
    "finetune",
    "linear_warmup_decay",
    "mdm_sft_loss",
    "merged_model",
]


@dataclass
class FinetuneResult:
    out_dir: Path
    method: str
    steps: int  # optimizer steps done (by the end of this invocation, resumed ones included)
    trainable_parameters: int
    train_losses: list[float]  # mean loss of each optimizer step (from step 1, across resumes)
    wall_s: float
    model: nn.Module  # the trained model (PeftModel / SparseFTModel / plain; merged for stages)
    eval: MathEvalResult | None
    stopped: bool = False  # ended early by `stop_at` (a checkpoint was written)
    resumed_from: int | None = None  # the checkpoint's step when this invocation resumed


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
_RUN_OUTPUTS = (
    "adapter",
    "final",
    "checkpoints",
    "metrics.jsonl",
    "eval.json",
    "config.yaml",
    "tensorboard",
)

# fields a resume may change: how often it logs / saves, and the evaluation after training
RESUME_SAFE_CHANGES = (
    "train.resume",
    "train.overwrite",
    "train.save_every",
    "train.log_every",
    "data.eval",
    "data.max_eval",
    "eval.max_new_tokens",
    "eval.batch_size",
    "eval.extract",
    "eval.samples",
    "eval.pass_k",
    "eval.temperature",
    "eval.top_p",
    "eval.top_k",
    "eval.seed",
    "eval.level_field",
)

CHECKPOINT_FORMAT = "layerwise-finetune/1"


def _clear_outputs(out: Path, names: list[str]) -> None:
    """Delete `names` in `out` (a rename into a temp folder first: a kill mid-delete is cleared
    at the next start)."""
    doomed = out / ".replaced-run.tmp"
    shutil.rmtree(doomed, ignore_errors=True)
    doomed.mkdir()
    for name in names:
        os.rename(out / name, doomed / name)
    shutil.rmtree(doomed)


def _claim_folder(out: Path, overwrite: bool, resume: bool = False) -> Path | None:
    """The checkpoint to resume from (None: start afresh). Refuses a folder that holds a
    fine-tuning run unless `overwrite` (its files are deleted) or `resume` (its latest checkpoint
    continues; without one the run starts afresh). Call while holding the folder's lock."""
    remove_temp_leftovers(out)
    recover_checkpoints(out / "checkpoints")
    if resume:
        latest = latest_checkpoint(out / "checkpoints")
        if latest is not None:
            return latest
    previous = [name for name in _RUN_OUTPUTS if (out / name).exists()]
    if not previous:
        return None
    if not (overwrite or resume):
        raise PathExistsError(
            f"{out} already holds a fine-tuning run ({', '.join(previous)}): set "
            "train.resume=true to continue it from its latest checkpoint, train.overwrite=true "
            "to replace it, or choose another train.out_dir"
        )
    _clear_outputs(out, previous)
    return None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """`{dotted field: [old, new]}` of every leaf that differs between two config dicts, minus
    `RESUME_SAFE_CHANGES` (a tagged choice switched to another name differs in its `name`)."""
    a, b = _flatten(old), _flatten(new)
    changed = {}
    for key in sorted(set(a) | set(b)):
        if key in RESUME_SAFE_CHANGES or a.get(key) == b.get(key):
            continue
        changed[key] = [a.get(key), b.get(key)]
    return changed


def _check_resume(cfg: FinetuneConfig, folder: Path) -> None:
    stored = read_checkpoint_file(folder / "config.yaml", yaml.safe_load)
    changes = config_changes(stored, cfg.to_dict())
    if changes:
        listed = ", ".join(f"{k} ({v[0]!r} -> {v[1]!r})" for k, v in changes.items())
        raise UsageError(
            f"cannot resume {folder}: the configuration differs from the checkpoint's in "
            f"{listed}; a resume may change only {', '.join(RESUME_SAFE_CHANGES)}: resume with "
            "the checkpoint's values, or start a new run (train.overwrite=true or another "
            "train.out_dir)"
        )


def finetune(
    cfg: FinetuneConfig,
    *,
    model: nn.Module | None = None,
    tokenizer=None,
    stop_at: int | None = None,
    merged_final: bool = False,
) -> FinetuneResult:
    """Run `cfg`; `model` / `tokenizer` replace loading `cfg.model.path` (already-loaded models).

    `stop_at` ends this invocation after that optimizer step with a checkpoint, as a pre-empted
    job would (`train.resume=true` continues it). `merged_final` (pipeline stages): the last
    thing written is `final/`, the full model with the adapter / sparse delta merged in, which the
    next stage loads.

    Holds the lock of `train.out_dir` throughout; refuses a folder that holds a run unless
    `train.overwrite=true` or `train.resume=true`."""
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then model.path is loaded)")
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"stop_at must be a step >= 1, got {stop_at}")
    with lock_run_folder(cfg.train.out_dir) as out:
        resume_from = _claim_folder(out, cfg.train.overwrite, cfg.train.resume)
        if resume_from is not None:
            _check_resume(cfg, resume_from)
        return _finetune(cfg, model, tokenizer, stop_at, resume_from, merged_final)


def merged_model(wrapped: nn.Module, method: str) -> nn.Module:
    """The plain model with what `method` trained folded in: LoRA `merge_and_unload`, LIFT /
    SEFT's sparse delta written into the weights (`SparseFTModel.merge_and_unload`)."""
    if method == "full":
        return wrapped
    return wrapped.merge_and_unload()


def _finetune(
    cfg: FinetuneConfig,
    model: nn.Module | None,
    tokenizer,
    stop_at: int | None,
    resume_from: Path | None,
    merged_final: bool,
) -> FinetuneResult:
    t0 = time.perf_counter()
    tc = cfg.train
    # every input is read and checked before the model loads and before anything is written
    records = read_jsonl(cfg.data.train, "data.train")
    problems = None
    if cfg.data.eval:
        problems = read_jsonl(cfg.data.eval, "data.eval")[: cfg.data.max_eval]
    if model is None:
        model, tokenizer = _load(cfg)
    prompt_format = cfg.data.prompt_format
    check_prompt_format(tokenizer, prompt_format)  # chat: the tokenizer must have a template
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    mdm = cfg.objective.name == "mdm"
    noise = None
    if mdm:  # LLaDA pads SFT answers with EOS and trains on it
        pad_id = tokenizer.eos_token_id
        mask_token_id, logit_shift = _mask_and_shift(model)
        noise = torch.Generator(device=device).manual_seed(tc.seed)
    objective: Objective | None = None
    if cfg.objective.name not in ("ntp", "mdm"):
        objective = cfg.objective.build()
    examples = encode_examples(
        records,
        tokenizer,
        cfg.data.instruction_field,
        cfg.data.answer_field,
        cfg.data.max_length,
        prompt_format,
    )
    set_seed(tc.seed)
    if cfg.prune.method != "none":  # calibrated on the training examples
        documents = [ids for ids, _ in examples]
        calibration = sparse_ft.packed_calibration(documents, cfg.prune.calibration_sequences, 128)
        cfg.prune.apply(model, calibration)
    wrapped, params, after_step = build_method(model, cfg.method, tc.seed)
    trainable = sum(p.numel() for p in params)
    optimizer = cfg.optimizer.build(params)
    per_micro = tc.batch_size
    if objective is not None:
        per_micro = objective.records_per_micro_batch(tc.batch_size)
        if not 1 <= per_micro <= len(examples):
            raise UsageError(
                f"objective={cfg.objective.name} takes {per_micro} records per micro-batch of "
                f"train.batch_size={tc.batch_size}, and data.train holds {len(examples)}: "
                "change train.batch_size (GRPO: a multiple of num_generations)"
            )
    per_step = per_micro * tc.grad_accum
    total = tc.steps or _steps_for(objective, tc.epochs * math.ceil(len(examples) / per_step))
    warmup = int(cfg.schedule.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: linear_warmup_decay(s, warmup, total)
    )
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if objective is not None:
        objective.setup(
            ObjectiveContext(
                model=wrapped,
                base_model=model,
                tokenizer=tokenizer,
                device=device,
                seed=tc.seed,
                out_dir=out,
                records=records,
                instruction_field=cfg.data.instruction_field,
                answer_field=cfg.data.answer_field,
                max_length=cfg.data.max_length,
                total_steps=total,
                prompt_format=prompt_format,
            )
        )
    if resume_from is None:
        cfg.to_yaml(out / "config.yaml")
    log = MetricsLog(out, tensorboard=False)
    generator = torch.Generator().manual_seed(tc.seed)
    run = _RunState(order=[], losses=[], metrics=[])
    start = 0
    if resume_from is not None:
        start = _load_checkpoint(
            resume_from, cfg, wrapped, optimizer, scheduler, objective, generator, noise, run
        )
        if start > total:
            raise UsageError(
                f"the checkpoint {resume_from} is at step {start}, past this run's {total} "
                "steps: resume with the run's train.steps / epochs"
            )
        log.truncate_after(start)
    clip = tc.grad_clip if tc.grad_clip is not None else math.inf
    end = total if stop_at is None else min(stop_at, total)
    wrapped.train()
    for step in range(start, end):
        step_loss = 0.0
        step_metrics: dict[str, float] = {}
        # every micro-batch's records first (none on a step the objective does not consume)
        consume = objective is None or consumes_records(objective, step)
        step_chosen: list[list[int]] = []
        for _ in range(tc.grad_accum):
            if consume and len(run.order) < per_micro:
                run.order += torch.randperm(len(examples), generator=generator).tolist()
            chosen = run.order[:per_micro] if consume else []
            run.order = run.order[len(chosen) :]
            step_chosen.append(chosen)
        if objective is not None:
            begin_step(objective, wrapped, step, [[records[i] for i in c] for c in step_chosen])
        for micro, chosen in enumerate(step_chosen):
            batch = {}
            if chosen:
                examples_in = [examples[i] for i in chosen]
                batch = {k: v.to(device) for k, v in collate(examples_in, pad_id).items()}
            if objective is not None:
                loss, extra = objective.loss(
                    wrapped, [records[i] for i in chosen], batch, step, micro
                )
                for key, value in extra.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + float(value) / tc.grad_accum
            elif mdm:
                loss = mdm_sft_loss(wrapped, batch, mask_token_id, logit_shift, noise)
            else:
                loss = wrapped(**batch).loss
            (loss / tc.grad_accum).backward()
            step_loss += loss.item() / tc.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if diverged(step_loss, grad_norm):  # before the update: never applied, never saved
            where = latest_checkpoint(out / "checkpoints") or "fine-tuning saves at the end"
            raise divergence_error(step + 1, step_loss, grad_norm, where)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(optimizer)
        run.losses.append(step_loss)
        run.metrics.append(step_metrics)
        if (step + 1) % tc.log_every == 0 or step + 1 == total:
            recent = run.losses[-tc.log_every :]
            record = {
                "step": step + 1,
                "split": "train",
                "loss": sum(recent) / len(recent),
                "lr": lr,
            }
            for key in sorted({k for m in run.metrics[-tc.log_every :] for k in m}):
                values = [m[key] for m in run.metrics[-tc.log_every :] if key in m]
                record[key] = sum(values) / len(values)
            record["elapsed_s"] = round(time.perf_counter() - t0, 3)
            log.log(record)
        due = tc.save_every is not None and (step + 1) % tc.save_every == 0 and step + 1 < total
        if due or (stop_at is not None and step + 1 == end and end < total):
            _save_checkpoint(
                out, step + 1, cfg, wrapped, optimizer, scheduler, objective, generator, noise, run
            )

    def result(steps: int, model: nn.Module, evaluation: MathEvalResult | None) -> FinetuneResult:
        return FinetuneResult(
            out_dir=out,
            method=cfg.method.name,
            steps=steps,
            trainable_parameters=trainable,
            train_losses=run.losses,
            wall_s=time.perf_counter() - t0,
            model=model,
            eval=evaluation,
            stopped=steps < total,
            resumed_from=start if resume_from is not None else None,
        )

    if end < total:  # stopped by stop_at: the checkpoint above continues it
        log.close()
        return result(end, wrapped, None)
    if tc.save and not (merged_final and cfg.method.name == "full"):
        _save(wrapped, tokenizer, cfg.method.name, out)
    result_eval = None
    if problems is not None:
        result_eval = _evaluate(cfg, wrapped, tokenizer, problems)
        logged = {"step": total, "split": "eval", "accuracy": result_eval.accuracy}
        logged.update({f"pass@{k}": v for k, v in result_eval.pass_at.items()})
        log.log(logged)
        with atomic_write(out / "eval.json", "w") as handle:
            # accuracy, correct, total, per_level, pass_at, per_level_pass_at, then the records
            json.dump({**result_eval.summary(), "records": result_eval.records}, handle, indent=1)
    log.close()
    if merged_final:  # last: a stage whose final/ exists is finished
        wrapped = merged_model(wrapped, cfg.method.name)
        with atomic_directory(out / "final") as tmp:
            wrapped.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        # a finished stage never resumes: its checkpoints (weights + optimizer) only take space
        if (out / "checkpoints").exists():
            _clear_outputs(out, ["checkpoints"])
    return result(total, wrapped, result_eval)


def _steps_for(objective: Objective | None, consuming: int) -> int:
    """Optimizer steps of a run whose data order lasts `consuming` record-consuming steps: up
    to the next consuming step after the last one (the objective's non-consuming steps, e.g.
    GRPO's num_iterations reuse, count on top: TRL's epoch of mu updates per batch)."""
    if objective is None:
        return consuming
    step = done = 0
    while True:
        if consumes_records(objective, step):
            if done == consuming:
                return step
            done += 1
        step += 1
        if step > 1000 * (consuming + 1):
            raise UsageError(
                "the objective consumes no records in 1000x the run's steps: set train.steps"
            )


def _evaluate(cfg: FinetuneConfig, model: nn.Module, tokenizer, problems: list[dict]):
    """The math evaluation with `cfg.eval`'s options on the training prompt
    (`data.prompt_format`)."""
    ev, prompt_format = cfg.eval, cfg.data.prompt_format
    return evaluate_math_generation(
        model,
        tokenizer,
        problems,
        lambda question: prompt_text(tokenizer, str(question), prompt_format),
        question_field=cfg.data.instruction_field,
        answer_field=cfg.data.answer_field,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        extract=ev.extract,
        samples=ev.samples,
        pass_k=tuple(ev.pass_k),
        temperature=ev.temperature,
        top_p=ev.top_p,
        top_k=ev.top_k,
        seed=ev.seed,
        level_field=ev.level_field,
    )


def _save(model: nn.Module, tokenizer, method: str, out: Path) -> None:
    """The model (full) or adapter, written atomically into `final/` or `adapter/`."""
    with atomic_directory(out / ("final" if method == "full" else "adapter")) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


# --- checkpoints ----------------------------------------------------------------------------------


@dataclass
class _RunState:
    """What the loop carries from step to step besides the model and optimizer."""

    order: list[int]  # the rest of the current epoch's shuffled example indices
    losses: list[float]  # per optimizer step
    metrics: list[dict[str, float]]  # the objective's per-step metrics (logged as window means)


def _trainable_state(wrapped: nn.Module, method: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, method state) that restore what training changed in the model."""
    if method == "full":
        return dict(wrapped.state_dict()), {}
    if method == "lora":
        return {n: p.detach() for n, p in wrapped.named_parameters() if p.requires_grad}, {}
    tensors, _ = wrapped.sparse_state()  # indices, values, touched positions and weights
    for name in ("sparse_step", "seft_phase", "min_zeros"):
        tensors[f"sparse_ft.{name}"] = getattr(wrapped, name)
    collectors = {}
    for name, collector in wrapped._collectors.items():  # SEFT's armed gradient collectors
        if isinstance(collector, GrowCollector):
            fresh = collector.positions is None
            args = ["grow", collector.n_candidates, collector.exclude_pruned]
        else:
            fresh = collector.support_grad is None
            args = ["prune", collector.n_prune, collector.kind]
        if not fresh:  # armed after a step, filled by the next backward: never seen here
            raise RuntimeError(f"SEFT collector of {name} holds gradients at a checkpoint")
        collectors[name] = args
    return tensors, {"collectors": collectors}


@torch.no_grad()
def _load_trainable_state(
    wrapped: nn.Module, method: str, tensors: dict[str, torch.Tensor], state: dict, path: Path
) -> None:
    if method == "full":
        wrapped.load_state_dict(tensors)
        return
    if method == "lora":
        expected = {n for n, p in wrapped.named_parameters() if p.requires_grad}
        if set(tensors) != expected:
            raise CheckpointFileError(
                f"{path} holds other LoRA tensors than this run trains: resume with the "
                "checkpoint's method settings"
            )
        result = wrapped.load_state_dict(tensors, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        return
    for name in ("sparse_step", "seft_phase", "min_zeros"):
        getattr(wrapped, name).copy_(tensors[f"sparse_ft.{name}"])
    modules = wrapped.sparse_modules()
    for name, module in modules.items():
        weight = module.base_layer.weight
        touched = tensors[f"{name}.touched_indices"].to(weight.device)
        weight.view(-1)[touched] = tensors[f"{name}.touched_weights"].to(
            weight.device, weight.dtype
        )
        module.indices = tensors[f"{name}.indices"].to(module.indices.device)
        module.values.data = tensors[f"{name}.values"].to(module.values.device, module.values.dtype)
        module.touched_indices = touched
    collectors = {}
    for name, (kind, count, option) in state.get("collectors", {}).items():
        if kind == "grow":
            collectors[name] = GrowCollector(modules[name], count, option)
        else:
            collectors[name] = PruneCollector(modules[name], count, option)
    wrapped._set_collectors(collectors)


def _save_checkpoint(
    out: Path,
    step: int,
    cfg: FinetuneConfig,
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    objective: Objective | None,
    generator: torch.Generator,
    noise: torch.Generator | None,
    run: _RunState,
) -> Path:
    """`checkpoints/step_{step}/` (complete or absent), then `latest`, then older ones deleted."""
    root = out / "checkpoints"
    tensors, method_state = _trainable_state(wrapped, cfg.method.name)
    folder = root / f"step_{step}"
    with atomic_directory(folder) as tmp:
        save_safetensors(tensors, tmp / "trainable.safetensors")
        torch_save_atomic(optimizer.state_dict(), tmp / "optimizer.pt")
        torch_save_atomic(scheduler.state_dict(), tmp / "scheduler.pt")
        torch_save_atomic(get_rng_state(), tmp / "rng.pt")
        data = {
            "order": torch.tensor(run.order, dtype=torch.long),
            "generator": generator.get_state(),
        }
        if noise is not None:
            data["noise"] = noise.get_state()
        torch_save_atomic(data, tmp / "data.pt")
        if objective is not None:
            torch_save_atomic(objective.state_dict(), tmp / "objective.pt")
        cfg.to_yaml(tmp / "config.yaml")
        with atomic_write(tmp / "trainer_state.json", "w") as handle:
            json.dump(
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": step,
                    "method": cfg.method.name,
                    "losses": run.losses,
                    "metrics": run.metrics,
                    **method_state,
                },
                handle,
            )
    with atomic_write(root / "latest", "w") as handle:
        handle.write(folder.name + "\n")
    for old in checkpoint_steps(root):
        if old != step:
            doomed = root / f".step_{old}.deleted.tmp"
            os.rename(root / f"step_{old}", doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return folder


def _load_checkpoint(
    folder: Path,
    cfg: FinetuneConfig,
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    objective: Objective | None,
    generator: torch.Generator,
    noise: torch.Generator | None,
    run: _RunState,
) -> int:
    """Restore everything `_save_checkpoint` wrote into the freshly built run; returns its step.
    The global RNGs are restored last, so the loop continues exactly."""
    state = read_checkpoint_file(folder / "trainer_state.json", json.loads)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFileError(
            f"{folder / 'trainer_state.json'} has format {state.get('format')!r}, this version "
            f"reads {CHECKPOINT_FORMAT}: start the run afresh (train.overwrite=true)"
        )
    tensors, _ = load_safetensors(folder / "trainable.safetensors")
    _load_trainable_state(wrapped, cfg.method.name, tensors, state, folder)
    optimizer.load_state_dict(torch_load_safe(folder / "optimizer.pt"))
    scheduler.load_state_dict(torch_load_safe(folder / "scheduler.pt"))
    data = torch_load_safe(folder / "data.pt")
    run.order = data["order"].tolist()
    generator.set_state(data["generator"])
    if noise is not None:
        noise.set_state(data["noise"])
    if objective is not None:
        objective.load_state_dict(torch_load_safe(folder / "objective.pt"))
    run.losses = [float(x) for x in state["losses"]]
    run.metrics = [dict(m) for m in state["metrics"]]
    set_rng_state(torch_load_safe(folder / "rng.pt"))
    return int(state["step"])
