"""Pre-training loop: next-token prediction on packed blocks, on `accelerate` (1 or N processes).

One optimizer step consumes one *global batch* of `batch_size * grad_accum * world_size` blocks:

    indices = sampler.next_indices(G)                              same on every process
    micro-batch m of process r = indices[(m*W + r)*B : (m*W + r + 1)*B]

Each micro-batch loss is the mean over its B*T tokens, scaled by 1/grad_accum before backward,
and DDP averages gradients over processes, so the update equals that of the mean loss over the
whole global batch: a 2-process run with half the per-process batch takes the same steps as a
1-process run (up to fp32 summation order).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from layerwise.data.packing import BlockSampler
from layerwise.data.prepare import PreparedData, prepare_data
from layerwise.eval.perplexity import PerplexityResult, perplexity
from layerwise.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from layerwise.train.config import PretrainConfig
from layerwise.train.mdm import mdm_loss, mdm_validation
from layerwise.train.metrics import MetricsLog
from layerwise.train.model import build_model
from layerwise.train.optimizers import build_optimizer, build_spectral_controller
from layerwise.train.schedule import warmup_cosine_scheduler
from layerwise_core import all_reduce_sum, set_seed

__all__ = ["PretrainResult", "pretrain"]


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


def _ensure_fresh(out: Path) -> None:
    if (out / "checkpoints").exists() or (out / "metrics.jsonl").exists():
        raise FileExistsError(
            f"{out} already holds a run; set train.resume=true to continue it, or choose another "
            "train.out_dir (or delete the folder)"
        )


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
    tc, oc = cfg.train, cfg.optim
    # cpu=True without CUDA: otherwise accelerate ignores a torchrun (gloo) launch on CPU and
    # every process trains alone
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(tc.precision), cpu=not torch.cuda.is_available()
    )
    main = accelerator.is_main_process
    out = Path(tc.out_dir)
    ckpt_root = out / "checkpoints"
    resume_from = latest_checkpoint(ckpt_root) if tc.resume else None
    if not tc.resume:  # every process checks, so that none waits forever for a failed one
        _ensure_fresh(out)
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
        objective=cfg.objective,
        mask_token_id=mask_in_vocab,
    )
    # the masked-diffusion objective trains and validates with its own loss (train/mdm.py)
    loss_fn = mdm_loss if cfg.objective == "mdm" else _train_loss
    score = mdm_validation if cfg.objective == "mdm" else perplexity
    mask_id = None
    if cfg.objective == "meap":
        import meap

        # the layerwise BPE already holds [MASK]; a hub tokenizer gets it (and the model its row)
        mask_id = meap.add_mask_token(data.tokenizer, model)
    optimizer = build_optimizer(cfg, model)
    scheduler = warmup_cosine_scheduler(optimizer, oc.warmup_steps, tc.steps, oc.min_lr_ratio)
    spectral = build_spectral_controller(cfg, optimizer, model, scheduler)
    sampler = BlockSampler(len(data.train), tc.seed)
    log = MetricsLog(out, enabled=main)
    step, pending_loss, pending_steps = 0, 0.0, 0
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
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
        cfg.to_yaml(out / "config.yaml")
    num_parameters = sum(p.numel() for p in model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)

    world, rank = accelerator.num_processes, accelerator.process_index
    B, A, T = tc.batch_size, tc.grad_accum, tc.block_size
    global_batch = B * A * world
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    clip = oc.grad_clip if oc.grad_clip is not None else math.inf
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
        )

    bar = tqdm(total=tc.steps, initial=step, disable=not main, desc=out.name, dynamic_ncols=True)
    model.train()
    while step < end:
        indices = sampler.next_indices(global_batch)
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for m in range(A):
            lo = (m * world + rank) * B
            batch = data.train.gather(indices[lo : lo + B]).to(device)
            sync = contextlib.nullcontext() if m == A - 1 else accelerator.no_sync(model)
            with sync:
                if cfg.objective == "meap":
                    loss = _meap_loss(cfg, model, batch, step, lo, global_batch, mask_id)
                else:
                    loss = loss_fn(model, batch)
                accelerator.backward(loss / A)
            step_loss += loss.detach().double()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
        if spectral is not None and spectral.step(step):  # alphas recomputed: log them
            alphas = {f"alpha/{name}": alpha for name, alpha in spectral.alphas.items()}
            log.log({"step": step + 1, "split": "spectral", **alphas})
        lr = scheduler.get_last_lr()[-1]  # the last group carries the base LR (LLR: group 0 is 5x)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        pending_loss += (all_reduce_sum(step_loss) / (A * world)).item()
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
        _save_final(accelerator, model, data.tokenizer, out / "final")
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
    """MEAP: next-token cross-entropy on inputs `blocks[:, :-1]` with a share replaced by [MASK],
    targets `blocks[:, 1:]` clean. The mask is a function of the optimizer step (and, per
    sequence, of the row's index in the global batch), so every micro-batch, process count and
    resume sees the same masks as a single-process run."""
    import meap

    inputs = blocks[:, :-1]
    if cfg.mask_mode == "reference":
        inputs = meap.mask_inputs(inputs, cfg.mask_ratio, mask_id, step)
    else:
        shape = torch.empty(global_batch, inputs.shape[1], dtype=torch.long)
        mask = meap.masked_positions(
            shape, cfg.mask_ratio, step, "per_sequence", seed=cfg.train.seed
        )[row_offset : row_offset + inputs.shape[0]]
        inputs = inputs.masked_fill(mask.to(inputs.device), mask_id)
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1))


def _save_final(accelerator, model, tokenizer, folder: Path) -> None:
    """The trained model as a Hugging Face folder (`from_pretrained` loads it), written atomically."""
    from layerwise.data.cache import atomic_directory

    if accelerator.is_main_process and not folder.exists():
        with atomic_directory(folder) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
