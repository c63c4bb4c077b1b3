"""Pre-training loop: next-token prediction on packed blocks, in 1 or N processes (DDP or FSDP2).

One optimizer step consumes one *global batch* of `batch_size * grad_accum * world_size` blocks:

    blocks = sampler.next_global_batch(G)      [G, T+1], the same on every process
    micro-batch m of process r = blocks[(m*W + r)*B : (m*W + r + 1)*B]

Each micro-batch loss is the mean over its B*T tokens, scaled by 1/grad_accum before backward,
and DDP / FSDP2 average gradients over processes (`train.parallelism`, train/parallel.py), so the
update equals that of the mean loss over the whole global batch: a 2-process run with half the
per-process batch takes the same steps as a 1-process run (up to fp32 summation order), and a
checkpoint resumes on another number of processes with the same global batch.

The run folder (`train.out_dir`) is locked for the whole call (`layerwise_core.lock_run_folder`):
a second writer is refused at once. A folder that already holds a run is refused unless
`train.resume` (continue it) or `train.overwrite` (replace it). A resume compares the
configuration with the checkpoint's and refuses any change outside `RESUME_SAFE_CHANGES`; the
allowed ones are appended to `history.jsonl`, and `config.yaml` keeps the configuration the run
was started with. See docs/reliability.md.

ELAS models (`model.mlp: relu2`, `model.low_rank`; sparse_ft): the FFNs' dense warm-up follows the
number of completed updates (`sparse_ft.set_elas_step` after each update and after a resume; the
step is a buffer, saved with the model). The optimizer step of every train record collects each
FFN's 2:4 statistics (`collect_stats`, `sparse_ft.elas_stats`), summed over its micro-batches and
processes in one all-reduce: the record carries `activation_sparsity/<module>` (share of zeros of
ReLU^2) and `dropped_mass_fraction/<module>` (share of the ReLU^2 mass the 2:4 select drops, or
would drop during the warm-up) per layer, and `PretrainResult.elas_stats` the last ones.

NeuroTrails (arXiv 2505.17909; `model.heads: K`, `sparsity.density: d`, sparse_ft):
- a multi-head model (`sparse_ft.MultiHeadForCausalLM`) trains on the SUM of its heads'
  next-token losses (each head's cross-entropy on its own logits, as the official code; not the
  mean); the train record carries that sum as `loss` and each head's as `loss/head{k}`, and
  validation scores the combined prediction (`model.heads.combine`) as `loss` / `perplexity`,
  plus `loss/head{k}`, `ensemble_gain` (mean head loss - combined loss) and `disagreement` (the
  heads' pairwise top-1 disagreement, `sparse_ft.multi_head.head_disagreement`);
- dynamic sparse training (`sparsity:`, `sparse_ft.DynamicSparsity`) masks every Linear /
  Embedding weight once the model is materialised (ERK densities, W *= M), and steps after each
  optimizer update, before the gradients are zeroed: W *= M, and every `update_every` updates a
  prune / regrow from the weights and the (all-reduced, clipped) gradients. The masks are the
  same on every process (seeded generators, full masks); the train record carries `density`
  (global), `density/<parameter>`, `prune_fraction` (of the last update), `mask_changed` and
  `mask_updates` (entries changed and update events since the previous record). The engine's
  state (step, masks, targets, the schedule's T) is in every checkpoint (`scheduler.pt`, key
  "sparsity") and restored on resume; a resume may change neither `sparsity` nor `model.heads`
  (a raised `train.steps` stretches the prune schedule from the resumed step on, as the LR's).
  An fp16 step the scaler skips advances the DST step count without a mask change or update.
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
from layerwise.models import build_model, init_model_weights
from layerwise.train.checkpoint import (
    export_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_training_state,
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
from layerwise.train.layer_variance import TrainingVarianceLog
from layerwise.train.mdm import mdm_loss, mdm_validation, step_noise
from layerwise.train.metrics import MetricsLog
from layerwise.train.optimizers import build_optimizer, build_spectral_controller
from layerwise.train.parallel import (
    DistributedEnv,
    autocast,
    clip_grad_norm,
    gradient_sync,
    init_distributed,
    main_process_first,
    mixed_precision_dtype,
    parallelize,
    shards_parameters,
)
from layerwise.train.schedule import warmup_cosine_scheduler
from layerwise.train.throughput import Throughput, model_flops_per_token, peak_flops
from layerwise_core import (
    PathExistsError,
    RunFolderError,
    all_reduce_sum,
    barrier,
    lock_run_folder,
    rank_batch_starts,
    remove_temp_leftovers,
    set_rng_state,
    set_seed,
)
from layerwise_kernels import Sparse24Stats
from sparse_ft import ELASFFN, elas_stats, set_elas_step
from sparse_ft.dst import DynamicSparsity
from sparse_ft.multi_head import combine_logits, head_disagreement

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
    # ELAS: the last train record's 2:4 statistics per FFN module name ({"activation_sparsity",
    # "dropped_mass_fraction"}); None for a model without ELAS FFNs or with no record logged
    elas_stats: dict[str, dict[str, float]] | None = None
    # dynamic sparsity: the masked tensors' global density at the end (nonzeros / entries of the
    # masked tensors); None without `sparsity`
    density: float | None = None
    # a multi-head model: the final validation's per-head losses, ensemble gain and disagreement
    # (the keys of its validation record); None for one model or with no final validation
    final_heads: dict[str, float] | None = None


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


def _check_resume(
    stored: PretrainConfig, cfg: PretrainConfig, folder: Path, stored_world: int, world: int
) -> dict:
    """The allowed changes `{field: [old, new]}` of a resume; refuses any other change.

    On another number of processes, train.batch_size and train.grad_accum may change when the
    global batch (batch_size x grad_accum x processes) stays the same: the same steps follow.
    """
    allowed, refused = resume_changes(stored, cfg)
    old, new = stored.train, cfg.train
    if old.batch_size * old.grad_accum * stored_world == new.batch_size * new.grad_accum * world:
        for key in ("train.batch_size", "train.grad_accum"):
            if key in refused:
                allowed[key] = refused.pop(key)
    if stored_world != world:
        allowed["processes"] = (stored_world, world)
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        safe = ", ".join(
            f"{k} ({rule})" if rule == "increase" else k
            for k, rule in RESUME_SAFE_CHANGES.items()
            if rule != "ignored"
        )
        raise ResumeDriftError(
            f"cannot resume {folder}: the configuration differs from the checkpoint's in "
            f"{listed}; a resume may change only {safe} (and train.batch_size / "
            "train.grad_accum on another number of processes, keeping the global batch): resume "
            "with the checkpoint's values, or start a new run (another train.out_dir, or "
            "train.overwrite=true)"
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
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    env = init_distributed()  # a torchrun / accelerate launch: join its process group
    with lock_run_folder(cfg.train.out_dir):  # rank 0 holds it; every rank learns a refusal
        return _pretrain(cfg, env, stop_at, data, t0, tqdm)


def _pretrain(
    cfg: PretrainConfig, env: DistributedEnv, stop_at, data, t0: float, tqdm
) -> PretrainResult:
    tc = cfg.train
    main = env.is_main
    out = Path(tc.out_dir)
    ckpt_root = out / "checkpoints"
    if main:  # what a killed writer left: temp files and folders, a checkpoint half-replaced
        remove_temp_leftovers(out)
        recover_checkpoints(ckpt_root)
    barrier()
    # every process checks, so that none waits forever for a refused one; nothing is written
    # to the run folder before these checks pass
    resume_from = latest_checkpoint(ckpt_root) if tc.resume else None
    changes, ckpt = {}, None
    if resume_from is not None:
        # every file but the tensor shards read (and refused if unsafe: an earlier version's
        # checkpoint first of all) now; the shards load into the model and optimizer below, and
        # the RNG state is put back last
        ckpt = load_checkpoint(resume_from, restore_rng=False)
        stored = _checkpoint_config(resume_from)
        stored_world = ckpt.trainer_state.get("world_size", 1)
        changes = _check_resume(stored, cfg, resume_from, stored_world, env.world_size)
    replaced = False
    if not tc.resume:
        replaced = _ensure_fresh(out, tc.overwrite, main)
        barrier()
    if data is None:
        with main_process_first():  # one process fills the caches, the others read
            data = prepare_data(cfg.data, tc.block_size)

    set_seed(tc.seed)
    mask_in_vocab = data.tokenizer.get_vocab().get("[MASK]")  # layerwise's BPE has one
    vocab_size = len(data.tokenizer)
    mask_id = None
    if cfg.objective.name == "meap":
        import meap

        # the layerwise BPE already holds [MASK]; a hub tokenizer gets it here (and the model
        # its row below, initialised from the other rows by the resize)
        mask_id = meap.add_mask_token(data.tokenizer)
    # the initial weights are a function of (train.seed, parameter name): the same whole or
    # sharded. Under FSDP2 the model is built on the meta device and each process materialises
    # its shards only, after parallelize (but a [MASK] row to add needs the whole embedding)
    on_meta = shards_parameters(tc.parallelism) and (mask_id is None or mask_id < vocab_size)
    model = build_model(
        cfg.model,
        vocab_size,
        tc.block_size,
        data.tokenizer.eos_token_id,
        objective=cfg.objective.name,
        mask_token_id=mask_in_vocab,
        seed=tc.seed,
        device="meta" if on_meta else env.device,
    )
    # the masked-diffusion objective validates with its own loss (train/mdm.py)
    score = mdm_validation if cfg.objective.name == "mdm" else perplexity
    if mask_id is not None:
        meap.add_mask_token(data.tokenizer, model)  # resizes the embeddings if the id is new
    num_parameters = sum(p.numel() for p in model.parameters())
    flops_per_token = model_flops_per_token(model, tc.block_size)
    # DDP wrapper or the model itself (FSDP2 shards it in place); the optimizer is built after,
    # on the model's (sharded) parameters
    train_model = parallelize(
        model,
        env,
        parallelism=tc.parallelism,
        precision=tc.precision,
        activation_checkpointing=tc.activation_checkpointing,
        compile=tc.compile,
    )
    if on_meta:  # this process's shards of the initial weights, on its device
        init_model_weights(model, cfg.model.init_std, tc.seed, env.device)
    # dynamic sparsity: masks from the global shapes and seeded generators (the same on every
    # process), applied to the initial weights now; None when dense
    sparsity = (
        DynamicSparsity(model, cfg.sparsity, tc.steps, seed=tc.seed)
        if cfg.sparsity.enabled
        else None
    )
    heads = cfg.model.heads.count if cfg.model.heads.enabled else 0  # 0: one model
    optimizer = build_optimizer(cfg, model)
    # LORO restarts its LR schedule after each exact step: a factor on top of warm-up + cosine
    factor = cfg.optimizer.schedule_factor if cfg.optimizer.name == "loro" else None
    scheduler = warmup_cosine_scheduler(
        optimizer, cfg.schedule.warmup_steps, tc.steps, cfg.schedule.min_lr_ratio, factor
    )
    # ELAS FFNs: their dense warm-up counts completed updates; their 2:4 statistics are logged
    elas_ffns = [m for m in model.modules() if isinstance(m, ELASFFN)]
    last_elas_stats = None
    # per-layer output variance from hooks on the decoder blocks (depth_probe's monitor)
    variance = TrainingVarianceLog(model) if tc.log_layer_variance_every else None
    spectral = build_spectral_controller(cfg, optimizer, model, scheduler)
    compute_dtype = mixed_precision_dtype(tc.precision)
    # fp16 (DDP / one process): loss scaling; a step whose gradients overflow is skipped
    scaler = torch.amp.GradScaler(env.device.type) if compute_dtype == torch.float16 else None
    # a global batch larger than the data is refused here, before the run writes anything
    global_batch = tc.batch_size * tc.grad_accum * env.world_size
    sampler = data.training_batches(tc.seed, global_batch)
    log = MetricsLog(out, enabled=main)
    step, pending_loss, pending_steps = 0, 0.0, 0
    pending_heads = [0.0] * heads  # per-head loss sums since the last record
    # dynamic sparsity since the last record: entries changed, update events; the last fraction
    mask_log = {"changed": 0, "updates": 0, "prune_fraction": None}
    if ckpt is not None:
        load_training_state(resume_from, model, optimizer)  # resharded to this run's processes
        _follow_run_length(optimizer, cfg)
        scheduler.load_state_dict(ckpt.scheduler_state["scheduler"])
        if scaler is not None and ckpt.scheduler_state.get("grad_scaler"):
            scaler.load_state_dict(ckpt.scheduler_state["grad_scaler"])
        sampler.load_state_dict(ckpt.trainer_state["data"])
        step = ckpt.step
        pending_loss = ckpt.trainer_state["pending_loss"]
        pending_steps = ckpt.trainer_state["pending_steps"]
        if spectral is not None:
            spectral.load_state_dict(ckpt.trainer_state["spectral"])
        if heads:
            pending_heads = list(ckpt.trainer_state["pending_head_losses"])
        if sparsity is not None:  # masks, targets, step count: bitwise (then W *= M)
            sparsity.load_state_dict(ckpt.scheduler_state["sparsity"])
            mask_log = dict(ckpt.trainer_state["sparsity_log"])
        set_rng_state(ckpt.rng_state)
    if elas_ffns:  # loaded with the model; set from the step all the same
        set_elas_step(model, step)
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

    world, rank = env.world_size, env.rank
    B, A, T = tc.batch_size, tc.grad_accum, tc.block_size
    end = tc.steps if stop_at is None else min(stop_at, tc.steps)
    clip = tc.grad_clip if tc.grad_clip is not None else math.inf
    device = env.device
    # the same validation blocks whatever the number of processes
    eval_blocks = None if tc.eval_batches is None else tc.eval_batches * B * world
    meter = Throughput(B * A * T, flops_per_token, peak_flops(device, compute_dtype))

    def evaluate() -> tuple[PerplexityResult, dict[str, float]]:
        with autocast(tc.precision, train_model, device):  # the bare model: no DDP hooks
            if heads:  # the combined prediction, and each head's
                return _multi_head_validation(model, data.validation, B, eval_blocks, device)
            return score(model, data.validation, B, eval_blocks, device), {}

    def write_hf(folder: Path) -> None:  # the Hugging Face folder of the checkpoint, sans weights
        model.config.save_pretrained(folder)
        data.tokenizer.save_pretrained(folder)

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_root,
            step,
            model=model,
            optimizer=optimizer,
            scheduler_state={
                "scheduler": scheduler.state_dict(),
                "grad_scaler": None if scaler is None else scaler.state_dict(),
                # masks (bool tensors, the same on every process), targets, step count
                "sparsity": None if sparsity is None else sparsity.state_dict(),
            },
            trainer_state={
                "data": sampler.state_dict(),
                "pending_loss": pending_loss,
                "pending_steps": pending_steps,
                "world_size": world,
                "parallelism": tc.parallelism,
                "spectral": None if spectral is None else spectral.state_dict(),
                "pending_head_losses": pending_heads,
                "sparsity_log": mask_log,
            },
            config_yaml=cfg.to_yaml(),
            write_hf=write_hf,
            keep_last=tc.keep_last,
        )

    quiet = not main or is_silenced()  # e.g. run_quickstart(quiet=True)
    bar = tqdm(total=tc.steps, initial=step, disable=quiet, desc=out.name, dynamic_ncols=True)
    train_model.train()
    while step < end:
        meter.start()
        blocks = sampler.next_global_batch(global_batch)
        will_log = (step + 1) % tc.log_every == 0 or step + 1 == tc.steps
        for ffn in elas_ffns:  # the 2:4 statistics of the steps that are logged
            ffn.collect_stats = will_log
        measure = variance is not None and (step + 1) % tc.log_layer_variance_every == 0
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        step_heads = torch.zeros(heads, dtype=torch.float64, device=device)
        for m in range(A):
            lo = (m * world + rank) * B
            batch = blocks[lo : lo + B].to(device)
            # DDP averages gradients over processes in the last micro-batch's backward only;
            # FSDP2 reduce-scatters after each (train/parallel.gradient_sync)
            with gradient_sync(train_model, m == A - 1):
                with (
                    autocast(tc.precision, train_model, device),
                    variance.armed() if measure else contextlib.nullcontext(),
                ):
                    if cfg.objective.name == "meap":
                        loss = _meap_loss(cfg, train_model, batch, step, lo, global_batch, mask_id)
                    elif cfg.objective.name == "mdm":
                        # the noise of this micro-batch's rows of the global batch (train/mdm.py)
                        noise = step_noise(
                            tc.seed, step, global_batch, batch.shape[1], slice(lo, lo + B)
                        )
                        loss = mdm_loss(train_model, batch, noise)
                    elif heads:  # the sum of the heads' losses (NeuroTrails)
                        loss, head_losses = _multi_head_loss(train_model, batch)
                        step_heads += head_losses.detach().double()
                    else:
                        loss = _train_loss(train_model, batch)
                (loss / A if scaler is None else scaler.scale(loss / A)).backward()
            step_loss += loss.detach().double()
        for ffn in elas_ffns:
            ffn.collect_stats = False
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = clip_grad_norm(model.parameters(), clip)
        if heads:  # one all-reduce for the sum and the heads
            means = (all_reduce_sum(torch.cat([step_loss.view(1), step_heads])) / (A * world)).cpu()
            mean_loss, head_means = means[0].item(), means[1:].tolist()
        else:
            mean_loss = (all_reduce_sum(step_loss) / (A * world)).item()
        # fp16: an overflowing gradient is the scaler's to skip (and to lower its scale)
        overflow = scaler is not None and not math.isfinite(float(grad_norm))
        if diverged(mean_loss, 0.0 if overflow else grad_norm):  # never applied, never saved
            bar.close()
            raise divergence_error(step + 1, mean_loss, grad_norm, latest_checkpoint(ckpt_root))
        if spectral is not None and spectral.step(step):  # alphas recomputed: log them
            alphas = {f"alpha/{name}": alpha for name, alpha in spectral.alphas.items()}
            log.log({"step": step + 1, "split": "spectral", **alphas})
        lr = scheduler.get_last_lr()[-1]  # the last group carries the base LR (LLR: group 0 is 5x)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        # dynamic sparsity: W *= M after the update, and on update steps a prune / regrow from
        # this step's gradients. An fp16 step the scaler skipped (its gradients overflowed) still
        # counts, as it does for the LR scheduler: sparsity.skip() advances the DST step count
        # without touching the masks (the weights did not change) and makes no prune / regrow,
        # even when one was due (the next comes update_every steps later); so
        # sparsity.step_count == step after every step, and p(t) is read at the run's step.
        if sparsity is not None and overflow:
            sparsity.skip()
        elif sparsity is not None:
            update = sparsity.step(optimizer)
            if update is not None:
                mask_log["updates"] += 1
                mask_log["prune_fraction"] = float(update["prune_fraction"])
                mask_log["changed"] += int(
                    sum(v for k, v in update.items() if k.startswith("changed/"))
                )
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if elas_ffns:  # the FFNs' 2:4 select starts after model.mlp.warmup_steps updates
            set_elas_step(model, step)
        pending_loss += mean_loss
        pending_steps += 1
        if heads:
            pending_heads = [a + b for a, b in zip(pending_heads, head_means)]
        bar.update(1)
        logged = step % tc.log_every == 0 or step == tc.steps
        meter.stop(device, sync=logged)
        if logged:
            record = {
                "step": step,
                "split": "train",
                "loss": pending_loss / pending_steps,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": step * global_batch * T,
                "elapsed_s": round(time.perf_counter() - t0, 3),
                **meter.record(),  # tokens_per_s per device, mfu (on a GPU of known peak)
            }
            if heads:
                for k, total in enumerate(pending_heads):
                    record[f"loss/head{k}"] = total / pending_steps
                pending_heads = [0.0] * heads
            if sparsity is not None:
                record.update(_sparsity_record(sparsity, mask_log))
                mask_log = {"changed": 0, "updates": 0, "prune_fraction": None}
            if measure:  # layer_variance/<l>, layer_variance/last
                record.update(variance.record())
            if elas_ffns:
                last_elas_stats = _reduced_elas_stats(model)
                for name, values in last_elas_stats.items():
                    for key, value in values.items():
                        record[f"{key}/{name}"] = value
            log.log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
            pending_loss, pending_steps = 0.0, 0
        if tc.eval_every and step % tc.eval_every == 0 and step != tc.steps:
            log.log(_validation_record(step, *evaluate()))
        if (tc.save_every and step % tc.save_every == 0) or step == end:
            checkpoint()
    bar.close()
    if variance is not None:
        variance.close()

    final_eval, final_heads = None, None
    if step == tc.steps:
        final_eval, extras = evaluate()
        final_heads = extras or None
        if not already_finished:  # resuming a finished run logs nothing twice
            log.log(_validation_record(step, final_eval, extras))
        # a resumed run that trained further replaces final/; a finished one only completes it
        if main:
            _save_final(latest_checkpoint(ckpt_root), out / "final", replace=not already_finished)
    log.close()
    barrier()
    return PretrainResult(
        out_dir=out,
        step=step,
        final_eval=final_eval,
        train_tokens=step * global_batch * T,
        wall_s=time.perf_counter() - t0,
        num_parameters=num_parameters,
        elas_stats=last_elas_stats,
        density=None if sparsity is None else sparsity.global_density(),
        final_heads=final_heads,
    )


def _reduced_elas_stats(model) -> dict[str, dict[str, float]]:
    """The ELAS FFNs' 2:4 statistics collected since the last call (`sparse_ft.elas_stats`, which
    resets them), summed over the processes in one all-reduce and read in one host sync:
    `{module name: {"activation_sparsity": ..., "dropped_mass_fraction": ...}}`."""
    stats = elas_stats(model, reset=True)
    if not stats:
        return {}
    fields = Sparse24Stats._fields  # count, nonzero_before, nonzero_after, mass_before, mass_after
    # float64 holds the int64 counters exactly up to 2^53 elements
    rows = torch.stack(
        [torch.stack([getattr(s, f).detach().double() for f in fields]) for s in stats.values()]
    )
    rows = all_reduce_sum(rows).cpu()
    out = {}
    for name, row in zip(stats, rows):
        total = Sparse24Stats(
            *(
                v.to(torch.int64) if f.startswith(("count", "nonzero")) else v
                for f, v in zip(fields, row)
            )
        )
        out[name] = {
            "activation_sparsity": float(total.activation_sparsity),
            "dropped_mass_fraction": float(total.dropped_mass_fraction),
        }
    return out


def _validation_record(step: int, result: PerplexityResult, extras: dict | None = None) -> dict:
    return {
        "step": step,
        "split": "validation",
        "loss": result.loss,
        "perplexity": result.perplexity,
        "tokens": result.tokens,
        **(extras or {}),
    }


def _sparsity_record(sparsity: DynamicSparsity, mask_log: dict) -> dict[str, float]:
    """The train-record keys of dynamic sparsity: `density` (global), `density/<parameter>`,
    `prune_fraction` of the last update (absent before the first), `mask_changed` and
    `mask_updates` since the previous record."""
    masks = sparsity.masks
    # nnz / N of every mask, read in one host sync (masks on a GPU)
    active = torch.stack([m.sum() for m in masks.values()]).tolist() if masks else []
    sizes = [m.numel() for m in masks.values()]
    record: dict[str, float] = {"density": sum(active) / sum(sizes) if sizes else 1.0}
    record.update({f"density/{k}": a / n for k, a, n in zip(masks, active, sizes)})
    if mask_log["prune_fraction"] is not None:
        record["prune_fraction"] = mask_log["prune_fraction"]
    record["mask_changed"] = mask_log["changed"]
    record["mask_updates"] = mask_log["updates"]
    return record


def _multi_head_loss(model, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NeuroTrails' training loss on `blocks`: the SUM over heads of each head's next-token
    cross-entropy (logits upcast to fp32, as `_train_loss`), and the K head losses [K]."""
    out = model(input_ids=blocks[:, :-1], use_cache=False)
    targets = blocks[:, 1:].reshape(-1)
    losses = torch.stack(
        [F.cross_entropy(z.float().reshape(-1, z.size(-1)), targets) for z in out.head_logits]
    )
    return losses.sum(), losses


@torch.no_grad()
def _multi_head_validation(
    model, blocks, batch_size: int, max_blocks: int | None, device
) -> tuple[PerplexityResult, dict[str, float]]:
    """`perplexity` of a multi-head model's combined prediction (`.logits`, the same sums in the
    same order), and in the same forward passes each head's loss (`loss/head{k}`), the ensemble
    gain (mean head loss - combined loss) and the heads' pairwise top-1 disagreement
    (`disagreement`, token-weighted over the batches); all-reduced over the processes."""
    count = len(blocks) if max_blocks is None else min(len(blocks), max_blocks)
    if count == 0:
        raise ValueError("no validation blocks: the validation split is shorter than one block")
    was_training = model.training
    model.eval()
    total = None  # [combined NLL, K head NLLs, disagreement x tokens, tokens]
    starts, idle = rank_batch_starts(count, batch_size)
    for start in starts:
        batch = blocks.gather(range(start, min(start + batch_size, count))).to(device)
        out = model(input_ids=batch[:, :-1], use_cache=False)
        targets = batch[:, 1:].reshape(-1)
        if total is None:
            total = torch.zeros(len(out.head_logits) + 3, dtype=torch.float64, device=device)
        # combined in float32 (under autocast the heads' logits are bf16)
        heads = [z.float() for z in out.head_logits]
        nll = [combine_logits(heads, model.config.combine), *heads]
        for i, logits in enumerate(nll):
            total[i] += F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), targets, reduction="sum"
            ).double()
        total[-2] += head_disagreement(out.head_logits) * targets.numel()
        total[-1] += targets.numel()
    for _ in range(idle):  # FSDP2: as many (collective) forward passes as the busiest process
        out = model(input_ids=blocks.gather(range(1)).to(device)[:, :-1], use_cache=False)
    if total is None:  # this process scored nothing: the size from an idle pass
        total = torch.zeros(len(out.head_logits) + 3, dtype=torch.float64, device=device)
    model.train(was_training)
    total = all_reduce_sum(total)
    means = (total[:-1] / total[-1]).tolist()
    loss, head_losses, disagreement = means[0], means[1:-1], means[-1]
    extras = {f"loss/head{k}": v for k, v in enumerate(head_losses)}
    extras["ensemble_gain"] = sum(head_losses) / len(head_losses) - loss
    extras["disagreement"] = disagreement
    result = PerplexityResult(loss=loss, perplexity=math.exp(loss), tokens=int(total[-1].item()))
    return result, extras


def _follow_run_length(optimizer, cfg: PretrainConfig) -> None:
    """After a resume: Stable-SPAM's cosine on beta1 spans the run (`optimizer.total_steps: null`),
    whose `train.steps` a resume may raise; the loaded param groups hold the old length."""
    if cfg.optimizer.name == "stable_spam" and cfg.optimizer.total_steps is None:
        for group in optimizer.param_groups:
            group["total_steps"] = cfg.train.steps


def _train_loss(model, blocks: torch.Tensor) -> torch.Tensor:
    """Next-token loss of `blocks`, plus the MoE/CoE load-balancing loss in training mode."""
    out = model(input_ids=blocks[:, :-1], use_cache=False)  # no KV cache while training
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
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), blocks[:, 1:].reshape(-1))


def _save_final(checkpoint: Path, folder: Path, replace: bool) -> None:
    """The trained model, exported from its last checkpoint (`export_checkpoint`, one process,
    whatever the parallelism), as a Hugging Face folder that `from_pretrained` loads, written
    atomically; with `replace`, an existing `folder` (of fewer steps) gives way once the new one
    is complete."""
    if folder.exists() and not replace:
        return
    old = folder.parent / f".{folder.name}.replaced.tmp"  # a temp name: cleared if killed
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(folder, old)
    export_checkpoint(checkpoint, folder)
    shutil.rmtree(old, ignore_errors=True)
