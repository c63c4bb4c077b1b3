"""Pre-training loop: next-token prediction on packed blocks, on `accelerate` (1 or N processes).

One optimizer step consumes one *global batch* of `batch_size * grad_accum * world_size` blocks:

    blocks = sampler.next_global_batch(G)      [G, T+1], the same on every process
    micro-batch m of process r = blocks[(m*W + r)*B : (m*W + r + 1)*B]

Each micro-batch loss is the mean over its B*T tokens, scaled by 1/grad_accum before backward,
and DDP averages gradients over processes, so the update equals that of the mean loss over the
whole global batch: a 2-process run with half the per-process batch takes the same steps as a
1-process run (up to fp32 summation order).

The run folder (`train.out_dir`) is locked for the whole call (`layerwise_core.lock_run_folder`):
a second writer is refused at once. A folder that already holds a run is refused unless
`train.resume` (continue it) or `train.overwrite` (replace it). A resume compares the
configuration with the checkpoint's and refuses any change outside `RESUME_SAFE_CHANGES`; the
allowed ones are appended to `history.jsonl`, and `config.yaml` keeps the configuration the run
was started with. See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.nn import functional as F

from layerwise._progress import is_silenced
from layerwise.data.prepare import PreparedData, prepare_data
from layerwise.eval.perplexity import PerplexityResult, perplexity
from layerwise.models import build_model
from layerwise.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_file,
    recover_checkpoints,
    save_checkpoint,
)
from layerwise.train.config import (
    RESUME_SAFE_CHANGES,
    PretrainConfig,
    resume_changes,
)
from layerwise.train.divergence import diverged, divergence_error
from layerwise.train.mdm import mdm_loss, mdm_validation
from layerwise.train.metrics import MetricsLog
from layerwise.train.optimizers import build_optimizer, build_spectral_controller
from layerwise.train.schedule import warmup_cosine_scheduler
from layerwise_core import (
    PathExistsError,
    RunFolderError,
    all_reduce_sum,
    lock_run_folder,
    remove_temp_leftovers,
    set_rng_state,
    set_seed,
)

__all__ = ["HISTORY", "PretrainResult", "ResumeDriftError", "pretrain"]

HISTORY = "history.jsonl"  # one record per start / resume of the run, with the allowed changes
# what a run writes into its folder (train.overwrite=true deletes these, nothing else)
_RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "config.yaml", HISTORY, "tensorboard")


class ResumeDriftError(RunFolderError):
    """A resume whose configuration differs from the checkpoint's in fields that must not change."""


@dataclass
class PretrainResult:
    out_dir: Path
    step: int  # optimizer steps done
    final_eval: PerplexityResult | None  # validation at the last step (None if stopped early)
    train_tokens: int  # tokens trained on, all processes together
    wall_s: float  # seconds spent in this call
    num_parameters: int


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _ensure_fresh(out: Path, overwrite: bool, main: bool) -> bool:
    """Refuse a folder that holds a run, unless `overwrite` (then the main process deletes the
    run's files). True when a previous run was replaced."""
    if not ((out / "checkpoints").exists() or (out / "metrics.jsonl").exists()):
        return False
    if not overwrite:
        raise PathExistsError(
            f"{out} already holds a run: set train.resume=true to continue it, "
            "train.overwrite=true to replace it, or choose another train.out_dir"
        )
    if main:  # moved aside first: a kill mid-delete leaves a temp folder, cleared at next start
        doomed = out / ".replaced-run.tmp"
        shutil.rmtree(doomed, ignore_errors=True)
        doomed.mkdir()
        for name in _RUN_OUTPUTS:
            if (out / name).exists():
                os.rename(out / name, doomed / name)
        shutil.rmtree(doomed)
    return True


def _checkpoint_config(folder: Path) -> PretrainConfig:
    return read_checkpoint_file(
        folder / "config.yaml", lambda text: PretrainConfig.from_dict(yaml.safe_load(text) or {})
    )


def _check_resume(stored: PretrainConfig, cfg: PretrainConfig, folder: Path) -> dict:
    """The allowed changes `{field: [old, new]}` of a resume; refuses any other change."""
    allowed, refused = resume_changes(stored, cfg)
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        safe = ", ".join(
            f"{k} ({rule})" if rule == "increase" else k
            for k, rule in RESUME_SAFE_CHANGES.items()
            if rule != "ignored"
        )
        raise ResumeDriftError(
            f"cannot resume {folder}: the configuration differs from the checkpoint's in "
            f"{listed}; a resume may change only {safe}: resume with the checkpoint's values, or "
            "start a new run (another train.out_dir, or train.overwrite=true)"
        )
    return {k: [old, new] for k, (old, new) in allowed.items()}


def _record_history(out: Path, record: dict) -> None:
    """Append one event to the run's history (fsynced: it records what the files cannot)."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **record,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    with (out / HISTORY).open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def pretrain(
    cfg: PretrainConfig, *, stop_at: int | None = None, data: PreparedData | None = None
) -> PretrainResult:
    """Train (or resume) the run described by `cfg`.

    `stop_at` ends this invocation after that optimizer step, with a checkpoint, as a pre-empted
    job would; the LR schedule still spans `cfg.train.steps`. `data` reuses prepared data (several
    runs on one corpus); by default it is prepared (and cached) from `cfg.data`.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    # cpu=True without CUDA: otherwise accelerate ignores a torchrun (gloo) launch on CPU and
    # every process trains alone
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg.train.precision), cpu=not torch.cuda.is_available()
    )
    with lock_run_folder(cfg.train.out_dir):  # rank 0 holds it; every rank learns a refusal
        return _pretrain(cfg, accelerator, stop_at, data, t0, tqdm)


def _pretrain(cfg: PretrainConfig, accelerator, stop_at, data, t0: float, tqdm) -> PretrainResult:
    tc = cfg.train
    main = accelerator.is_main_process
    out = Path(tc.out_dir)
    ckpt_root = out / "checkpoints"
    if main:  # what a killed writer left: temp files and folders, a checkpoint half-replaced
        remove_temp_leftovers(out)
        recover_checkpoints(ckpt_root)
    accelerator.wait_for_everyone()
    # every process checks, so that none waits forever for a refused one; nothing is written
    # to the run folder before these checks pass
    resume_from = latest_checkpoint(ckpt_root) if tc.resume else None
    changes, ckpt = {}, None
    if resume_from is not None:
        changes = _check_resume(_checkpoint_config(resume_from), cfg, resume_from)
        # every file read (and refused if unsafe) now; the RNG state is put back further down,
        # after model construction has drawn from the seeded generators
        ckpt = load_checkpoint(resume_from, restore_rng=False)
    replaced = False
    if not tc.resume:
        replaced = _ensure_fresh(out, tc.overwrite, main)
        accelerator.wait_for_everyone()
    if data is None:
        with accelerator.main_process_first():  # one process fills the caches, the others read
            data = prepare_data(cfg.data, tc.block_size)

    set_seed(tc.seed)
    mask_in_vocab = data.tokenizer.get_vocab().get("[MASK]")  # layerwise's BPE has one
    model = build_model(
        cfg.model,
        len(data.tokenizer),
        tc.block_size,
        data.tokenizer.eos_token_id,
        objective=cfg.objective.name,
        mask_token_id=mask_in_vocab,
    )
    # the masked-diffusion objective trains and validates with its own loss (train/mdm.py)
    loss_fn = mdm_loss if cfg.objective.name == "mdm" else _train_loss
    score = mdm_validation if cfg.objective.name == "mdm" else perplexity
    mask_id = None
    if cfg.objective.name == "meap":
        import meap

        # the layerwise BPE already holds [MASK]; a hub tokenizer gets it (and the model its row)
        mask_id = meap.add_mask_token(data.tokenizer, model)
    optimizer = build_optimizer(cfg, model)
    scheduler = warmup_cosine_scheduler(
        optimizer, cfg.schedule.warmup_steps, tc.steps, cfg.schedule.min_lr_ratio
    )
    spectral = build_spectral_controller(cfg, optimizer, model, scheduler)
    # a global batch larger than the data is refused here, before the run writes anything
    global_batch = tc.batch_size * tc.grad_accum * accelerator.num_processes
    sampler = data.training_batches(tc.seed, global_batch)
    log = MetricsLog(out, enabled=main)
    step, pending_loss, pending_steps = 0, 0.0, 0
    if ckpt is not None:
        set_rng_state(ckpt.rng_state)
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optimizer_state["optimizer"])
        scheduler.load_state_dict(ckpt.optimizer_state["scheduler"])
        sampler.load_state_dict(ckpt.trainer_state["data"])
        step = ckpt.step
        pending_loss = ckpt.trainer_state["pending_loss"]
        pending_steps = ckpt.trainer_state["pending_steps"]
        if spectral is not None:
            spectral.load_state_dict(ckpt.trainer_state["spectral"])
    if tc.resume:  # records after the checkpoint (or all, if there is none) are redone
        log.truncate_after(step)
    already_finished = step == tc.steps
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None:  # config.yaml: the configuration the run was started with
            cfg.to_yaml(out / "config.yaml")
            _record_history(out, {"event": "start", "step": 0, "replaced_run": replaced})
        else:  # never rewritten: what a resume changed (only safe fields) goes to the history
            where = str(resume_from.relative_to(out))
            _record_history(
                out, {"event": "resume", "step": step, "checkpoint": where, "changes": changes}
            )
    num_parameters = sum(p.numel() for p in model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)

    world, rank = accelerator.num_processes, accelerator.process_index
    B, A, T = tc.batch_size, tc.grad_accum, tc.block_size
    global_batch = B * A * world
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    clip = tc.grad_clip if tc.grad_clip is not None else math.inf
    device = accelerator.device
    # the same validation blocks whatever the number of processes
    eval_blocks = None if tc.eval_batches is None else tc.eval_batches * B * world

    def evaluate() -> PerplexityResult:
        with accelerator.autocast():
            return score(accelerator.unwrap_model(model), data.validation, B, eval_blocks, device)

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_root,
            step,
            model_state=accelerator.get_state_dict(model),
            optimizer_state={
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            trainer_state={
                "data": sampler.state_dict(),
                "pending_loss": pending_loss,
                "pending_steps": pending_steps,
                "world_size": world,
                "spectral": None if spectral is None else spectral.state_dict(),
            },
            config_yaml=cfg.to_yaml(),
            keep_last=tc.keep_last,
        )

    quiet = not main or is_silenced()  # e.g. run_quickstart(quiet=True)
    bar = tqdm(total=tc.steps, initial=step, disable=quiet, desc=out.name, dynamic_ncols=True)
    model.train()
    while step < end:
        blocks = sampler.next_global_batch(global_batch)
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for m in range(A):
            lo = (m * world + rank) * B
            batch = blocks[lo : lo + B].to(device)
            sync = contextlib.nullcontext() if m == A - 1 else accelerator.no_sync(model)
            with sync:
                if cfg.objective.name == "meap":
                    loss = _meap_loss(cfg, model, batch, step, lo, global_batch, mask_id)
                else:
                    loss = loss_fn(model, batch)
                accelerator.backward(loss / A)
            step_loss += loss.detach().double()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
        mean_loss = (all_reduce_sum(step_loss) / (A * world)).item()
        if diverged(mean_loss, grad_norm):  # before the update: never applied, never saved
            bar.close()
            raise divergence_error(step + 1, mean_loss, grad_norm, latest_checkpoint(ckpt_root))
        if spectral is not None and spectral.step(step):  # alphas recomputed: log them
            alphas = {f"alpha/{name}": alpha for name, alpha in spectral.alphas.items()}
            log.log({"step": step + 1, "split": "spectral", **alphas})
        lr = scheduler.get_last_lr()[-1]  # the last group carries the base LR (LLR: group 0 is 5x)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        pending_loss += mean_loss
        pending_steps += 1
        bar.update(1)
        if step % tc.log_every == 0 or step == tc.steps:
            record = {
                "step": step,
                "split": "train",
                "loss": pending_loss / pending_steps,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": step * global_batch * T,
                "elapsed_s": round(time.perf_counter() - t0, 3),
            }
            log.log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
            pending_loss, pending_steps = 0.0, 0
        if tc.eval_every and step % tc.eval_every == 0 and step != tc.steps:
            log.log(_validation_record(step, evaluate()))
        if (tc.save_every and step % tc.save_every == 0) or step == end:
            checkpoint()
    bar.close()

    final_eval = None
    if step == tc.steps:
        final_eval = evaluate()
        if not already_finished:  # resuming a finished run logs nothing twice
            log.log(_validation_record(step, final_eval))
        # a resumed run that trained further replaces final/; a finished one only completes it
        _save_final(accelerator, model, data.tokenizer, out / "final", replace=not already_finished)
    log.close()
    accelerator.wait_for_everyone()
    return PretrainResult(
        out_dir=out,
        step=step,
        final_eval=final_eval,
        train_tokens=step * global_batch * T,
        wall_s=time.perf_counter() - t0,
        num_parameters=num_parameters,
    )


def _validation_record(step: int, result: PerplexityResult) -> dict:
    return {
        "step": step,
        "split": "validation",
        "loss": result.loss,
        "perplexity": result.perplexity,
        "tokens": result.tokens,
    }


def _train_loss(model, blocks: torch.Tensor) -> torch.Tensor:
    """Next-token loss of `blocks`, plus the MoE/CoE load-balancing loss in training mode."""
    out = model(input_ids=blocks[:, :-1])
    logits = out.logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1))
    aux = getattr(out, "aux_loss", None)  # alpha * sum of balance losses; None for dense / eval
    return loss if aux is None else loss + aux


def _meap_loss(cfg, model, blocks, step, row_offset, global_batch, mask_id) -> torch.Tensor:
    """MEAP: next-token cross-entropy on inputs `blocks[:, :-1]` with a share replaced by [MASK]
    (`meap.MEAPConfig.masked_inputs`), targets `blocks[:, 1:]` clean. The mask is a function of
    the optimizer step (and, per sequence, of the row's index in the global batch), so every
    micro-batch, process count and resume sees the same masks as a single-process run."""
    inputs = cfg.objective.masked_inputs(
        blocks[:, :-1],
        mask_id,
        step,
        row_offset=row_offset,
        global_batch=global_batch,
        seed=cfg.train.seed,
    )
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1))


def _save_final(accelerator, model, tokenizer, folder: Path, replace: bool) -> None:
    """The trained model as a Hugging Face folder (`from_pretrained` loads it), written atomically;
    with `replace`, an existing `folder` (of fewer steps) gives way once the new one is complete."""
    from layerwise.data.cache import atomic_directory

    if not accelerator.is_main_process or (folder.exists() and not replace):
        return
    old = folder.parent / f".{folder.name}.replaced.tmp"  # a temp name: cleared if killed
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    with atomic_directory(folder) as tmp:
        accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(old, ignore_errors=True)
