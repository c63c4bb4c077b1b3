"""The pre-training pipeline on CPU (issue 16): what `layerwise pretrain` costs over a bare torch loop,
torch.compile vs eager, FSDP2 vs DDP on 2 processes, and peak memory per process of both at 130M.

    python integration/benchmarks/bench_pipeline.py [--repeats 7] [--parts loop,dist,memory]

- loop (one process): three arms interleaved round-robin, each a whole run of `--steps` optimizer
  steps on the same Llama (hidden 256, 4 layers, ffn 688, vocab 4096), blocks of 128, batch 8,
  fp32, AdamW, warm-up + cosine LR, gradient clipping at 1.0, the same seed and data blocks: the
  real `layerwise.train.pretrain` with `train.compile` off and on, and a bare torch loop over the
  same blocks (gathered before it starts). A step is timed between the ends of two consecutive
  optimizer steps (a global `torch.optim` step post-hook), so it holds everything the loop does
  per step. Per run: the median and the mean of the steps after `--warmup` (the mean includes the
  metrics record written every `train.log_every` = 10 steps); the tables give medians over
  `--repeats` runs. The bare loop's losses must equal the logged ones (the same training).
- dist: `torchrun --nproc_per_node 2` (gloo, 1 torch thread per process), the same model and global
  batch (4 blocks per process), `train.parallelism=ddp` and `fsdp2` interleaved in one launch.
- memory: llama-130m (vocab 32000: 134M parameters), blocks of 64, 1 block per process, 3 steps,
  one fresh launch per parallelism, with glibc's default malloc and with a fixed mmap threshold;
  peak RSS (`resource.getrusage`) of every process at marks along the run, and the bytes of the
  training state (parameters, gradients, AdamW moments) each process holds.

Writes (replacing its previous ones) four sections of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch.nn import functional as F

from layerwise_core.benchmarking import append_section, markdown_table

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "integration/benchmarks/bench_pipeline.py"
TITLES = {
    "loop": "integration: `layerwise pretrain` step vs a bare torch loop",
    "compile": "integration: `layerwise pretrain` step, train.compile=true vs eager",
    "dist": "integration: `layerwise pretrain` step, FSDP2 vs DDP on 2 processes",
    "memory": "integration: peak memory per process at 130M, FSDP2 vs DDP on 2 processes",
}
# the loop benchmark's Llama: hidden 256 x 4 layers (5.3M parameters at vocabulary 4096)
SMALL = {
    "preset": "llama-tiny",
    "overrides": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 688,
    },
}
# glibc raises its mmap threshold (up to 32 MiB) each time it frees an mmapped block; a fixed
# value (this env var) keeps large blocks in mmap, returned to the OS when freed
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MIB = 2**20


def run_config(out_dir: str | Path, model: dict, data: dict, **train) -> dict:
    """A `PretrainConfig` dict: AdamW (LLM values), warm-up 5 then cosine, fp32, clip 1.0, no
    validation or checkpoint before the end, a metrics record every 10 steps."""
    return {
        "data": data,
        "model": model,
        "optimizer": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"warmup_steps": train.pop("warmup_steps", 5)},
        "train": {
            "steps": 30,
            "batch_size": 8,
            "block_size": 128,
            "eval_every": 0,
            "save_every": 0,
            "log_every": 10,
            "precision": "no",
            "grad_clip": 1.0,
            "out_dir": str(out_dir),
            "overwrite": True,
            **train,
        },
    }


class StepClock:
    """`time.perf_counter()` at the end of every optimizer step (any optimizer: a global post-hook);
    `on_step(optimizer)` is called there too."""

    def __init__(self, on_step: Callable[[torch.optim.Optimizer], None] | None = None):
        self.times: list[float] = []
        self.on_step = on_step

    def __enter__(self) -> StepClock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.start = time.perf_counter()
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def _hook(self, optimizer, args, kwargs) -> None:
        self.times.append(time.perf_counter())
        if self.on_step is not None:
            self.on_step(optimizer)

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()
        self._handle.remove()

    def steps(self, warmup: int) -> list[float]:
        """Seconds of each step after the first `warmup`."""
        if len(self.times) <= warmup:
            raise ValueError(f"{len(self.times)} steps recorded, need more than {warmup}")
        return [b - a for a, b in zip(self.times[warmup - 1 :], self.times[warmup:])]

    def steady(self, warmup: int) -> dict[str, float]:
        steps = self.steps(warmup)
        return {"median": statistics.median(steps), "mean": statistics.fmean(steps)}


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per arm: the medians over runs of the runs' median and mean step, and the spread of the
    runs' medians (lowest and highest, relative to their median)."""
    out = {}
    for arm, values in runs.items():
        median = statistics.median(r["median"] for r in values)
        out[arm] = {
            "median": median,
            "mean": statistics.median(r["mean"] for r in values),
            "low": min(r["median"] for r in values) / median - 1,
            "high": max(r["median"] for r in values) / median - 1,
        }
    return out


def spread(stats: dict[str, dict[str, float]], names: dict[str, str]) -> str:
    return ", ".join(
        f"{label} {stats[arm]['low']:+.0%} / {stats[arm]['high']:+.0%}"
        for arm, label in names.items()
    )


def rotated(arms: list[str], round_: int) -> list[str]:
    """The arms in the order of round `round_`: each starts a round in turn, so that what a run
    inherits from the one before it (heap, caches, the neighbours' load) falls on every arm."""
    k = round_ % len(arms)
    return arms[k:] + arms[:k]


def logged_losses(out_dir: Path) -> list[float]:
    from layerwise.train import read_metrics

    return [r["loss"] for r in read_metrics(out_dir) if r["split"] == "train"]


def window_means(losses: list[float], every: int) -> list[float]:
    """The loss of each metrics record (mean over its `every` steps), summed as `pretrain` does."""
    means = []
    for end in range(every, len(losses) + every, every):
        chunk = losses[end - every : min(end, len(losses))]
        total = 0.0
        for value in chunk:
            total += value
        means.append(total / len(chunk))
    return means


def bare_loop(cfg, data) -> tuple[list[float], StepClock]:
    """The training of `pretrain(cfg)` in a plain loop: the model `build_model` makes for the same
    seed, torch AdamW on the same two param groups (decay on matrices only), the same warm-up +
    cosine, the same clipping, the same blocks (gathered before the loop)."""
    from layerwise.models import build_model
    from layerwise.train.schedule import warmup_cosine

    tc, opt = cfg.train, cfg.optimizer
    vocab, eos = len(data.tokenizer), data.tokenizer.eos_token_id
    model = build_model(cfg.model, vocab, tc.block_size, eos, seed=tc.seed)
    model.train()
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": opt.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)
    warmup, floor = cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup, tc.steps, floor)
    )
    sampler = data.training_batches(tc.seed, tc.batch_size)
    batches = [sampler.next_global_batch(tc.batch_size) for _ in range(tc.steps)]
    losses = []
    with StepClock() as clock:
        for batch in batches:
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            targets = batch[:, 1:].reshape(-1)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
    return [float(loss) for loss in losses], clock


def timed_pretrain(cfg, data, on_step=None, **kwargs):
    from layerwise.train import pretrain

    with StepClock(on_step) as clock:
        pretrain(cfg, data=data, **kwargs)
    return clock


def dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_us(fn: Callable[[], object], repeats: int = 200) -> float:
    return statistics.median(timed(fn) for _ in range(repeats)) * 1e6


def loop_extras(cfg, data) -> list[tuple[str, float, int]]:
    """What `pretrain`'s loop does per step besides forward, backward, clipping and the optimizer
    (which the bare loop does too), each timed alone on the same model: (what, microseconds per
    call, steps per call)."""
    from tqdm.auto import tqdm

    from layerwise.models import build_model
    from layerwise.train.divergence import diverged
    from layerwise.train.metrics import MetricsLog
    from layerwise.train.parallel import autocast, clip_grad_norm, gradient_sync
    from layerwise.train.throughput import Throughput
    from layerwise_core import all_reduce_sum

    tc = cfg.train
    vocab, eos = len(data.tokenizer), data.tokenizer.eos_token_id
    model = build_model(cfg.model, vocab, tc.block_size, eos, seed=tc.seed)
    sampler = data.training_batches(tc.seed, tc.batch_size)
    batch = sampler.next_global_batch(tc.batch_size)
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
    loss.backward()
    cpu = torch.device("cpu")
    grad_norm = clip_grad_norm(model.parameters(), math.inf)

    def bookkeeping():
        step_loss = torch.zeros((), dtype=torch.float64)
        step_loss += loss.detach().double()
        mean = (all_reduce_sum(step_loss) / 1).item()
        diverged(mean, grad_norm)

    def contexts():
        with gradient_sync(model, True), autocast(tc.precision, model, cpu):
            pass

    meter = Throughput(tc.batch_size * tc.block_size, 1.0, None)

    def meter_step():
        meter.start()
        meter.stop(cpu)

    # a step lasts longer than tqdm's mininterval (0.1 s): every update redraws the bar
    bar = tqdm(total=10**9, file=io.StringIO(), dynamic_ncols=True, mininterval=0)
    with tempfile.TemporaryDirectory() as tmp:
        log = MetricsLog(tmp)
        record = {"step": 1, "split": "train", "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0}

        def log_record():
            meter_step()
            log.log({**record, "elapsed_s": 1.0, **meter.record()})
            bar.set_postfix(loss="5.000", lr="1.00e-03")

        def next_batch():
            sampler.next_global_batch(tc.batch_size)

        rows = [
            ("next global batch (gathered from the memory-mapped stream)", next_batch, 1),
            ("loss sum in float64, all_reduce_sum, .item(), divergence check", bookkeeping, 1),
            ("gradient_sync + autocast contexts (no-ops in fp32, 1 process)", contexts, 1),
            ("throughput meter start/stop", meter_step, 1),
            ("tqdm bar.update(1) with a redraw", lambda: bar.update(1), 1),
            ("metrics record: meter.record, JSON append, bar postfix", log_record, 10),
        ]
        measured = [(what, median_us(fn), every) for what, fn, every in rows]
        log.close()
    bar.close()
    clip = median_us(lambda: clip_grad_norm(model.parameters(), 1.0), 50)
    return [*measured, ("clip_grad_norm (the bare loop: torch's clip_grad_norm_)", clip, 1)]


def bench_loop(args) -> dict:
    """Parts 1 and 4: bare loop, pretrain, pretrain with compile, interleaved in this process."""
    import torch._dynamo

    from layerwise.data import DataConfig, prepare_data
    from layerwise.eval.perplexity import perplexity
    from layerwise.models import build_model
    from layerwise.train import PretrainConfig

    data_cfg = {"vocab_size": 4096}
    data = prepare_data(DataConfig(**data_cfg), 128)
    arms = ["bare", "pretrain", "compile"]
    steady = {arm: [] for arm in arms}
    first_step = {arm: [] for arm in arms}  # seconds from the call to the end of step 1
    wrap_up = []  # pretrain: end of the last step to the return (checkpoint, final eval, export)
    graphs, max_loss_diff = [], 0.0
    # a fresh inductor cache: the first compile is what a first run on a new machine pays
    cache = tempfile.mkdtemp(prefix="bench-inductor-")
    old_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats + 1):  # round 0: warm-up (and the first compile)
            for arm in rotated(arms, repeat):  # round 0 starts with the bare loop's reference
                out = Path(tmp) / arm
                raw = run_config(out, SMALL, data_cfg, steps=args.steps, compile=arm == "compile")
                cfg = PretrainConfig.from_dict(raw)
                if arm == "bare":
                    losses, clock = bare_loop(cfg, data)
                    if repeat == 0:
                        reference = window_means(losses, cfg.train.log_every)
                    elif window_means(losses, cfg.train.log_every) != reference:
                        raise AssertionError("the bare loop's losses changed between runs")
                else:
                    if arm == "compile":
                        torch._dynamo.reset()  # every compiled run compiles its own model
                        before = dynamo_graphs()
                    clock = timed_pretrain(cfg, data)
                    if arm == "compile":
                        graphs.append(dynamo_graphs() - before)
                    logged = logged_losses(out)
                    if len(logged) != len(reference):
                        raise AssertionError(f"{arm}: {logged} logged, bare loop {reference}")
                    for a, b in zip(logged, reference):
                        max_loss_diff = max(max_loss_diff, abs(a - b) / abs(b))
                    if arm == "pretrain":
                        wrap_up.append(clock.end - clock.times[-1])
                    shutil.rmtree(out)
                first_step[arm].append(clock.times[0] - clock.start)
                run = clock.steady(args.warmup)
                if repeat > 0:
                    steady[arm].append(run)
                print(
                    f"[loop] round {repeat} {arm}: median {run['median'] * 1e3:.1f} ms, mean "
                    f"{run['mean'] * 1e3:.1f} ms per step, first step {first_step[arm][-1]:.2f} s",
                    flush=True,
                )
    shutil.rmtree(cache, ignore_errors=True)
    # the torchrun workers of the other parts would recreate it
    if old_cache is None:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = old_cache
    if max_loss_diff > 1e-6:
        raise AssertionError(
            f"pretrain's logged losses differ from the bare loop's: {max_loss_diff}"
        )
    if min(graphs) == 0:
        raise AssertionError(f"train.compile=true compiled no graph in some run: {graphs}")
    # one validation at the default eval_batches (20 x batch 8), as the run's evaluate() calls it
    cfg = PretrainConfig.from_dict(run_config("unused", SMALL, data_cfg, steps=args.steps))
    vocab, eos = len(data.tokenizer), data.tokenizer.eos_token_id
    model = build_model(cfg.model, vocab, 128, eos, seed=cfg.train.seed)
    blocks = cfg.train.eval_batches * cfg.train.batch_size
    eval_s = statistics.median(
        timed(lambda: perplexity(model, data.validation, 8, blocks)) for _ in range(3)
    )
    return {
        "steady": summarize(steady),
        "first_step": first_step,
        "wrap_up": statistics.median(wrap_up),
        "eval_s": eval_s,
        "eval_batches": cfg.train.eval_batches,
        "graphs": graphs,
        "max_loss_diff": max_loss_diff,
        "extras": loop_extras(cfg, data),
        "params": sum(p.numel() for p in model.parameters()),
    }


def write_loop(args, res: dict, out: Path) -> None:
    s = res["steady"]
    bare, ours = s["bare"], s["pretrain"]
    rows = [
        ["bare torch loop", "1.000x", "1.000x"],
        [
            "`pretrain()`",
            f"{ours['median'] / bare['median']:.3f}x",
            f"{ours['mean'] / bare['mean']:.3f}x",
        ],
    ]
    body = markdown_table(["Loop", "Median step vs bare loop", "Mean step vs bare loop"], rows)
    step_us = bare["median"] * 1e6
    extras = res["extras"]
    own_us = sum(us / every for what, us, every in extras if not what.startswith("clip"))
    body += "\n\nWhat the loop adds per step, each part timed alone on the same model:\n\n"
    body += markdown_table(
        ["Part", "Per call", "Share of a step"],
        [
            [
                what + ("" if every == 1 else f" (every {every} steps)"),
                f"{us:.1f} us",
                f"{us / every / step_us:.3%}",
            ]
            for what, us, every in extras
        ],
    )
    eval_steps = res["eval_s"] / (ours["median"])
    notes = [
        f"Llama hidden 256, 4 layers, ffn 688, vocab 4096 BPE ({res['params'] / 1e6:.1f}M "
        "parameters), blocks of 128, batch 8, fp32, AdamW (lr 1e-3, betas 0.9/0.95, weight decay "
        f"0.1 on matrices), warm-up 5 + cosine, clip 1.0, seed 0; {args.steps} steps per run. "
        f"Step time: per run the median (and the mean) of the steps after step {args.warmup}, "
        "between the ends of consecutive optimizer steps (one metrics record every 10 steps, in "
        f"the mean; no validation or checkpoint in between); medians of {args.repeats} runs per "
        "arm, interleaved with the compile arm after one warm-up round, one process. "
        "Target: <= 1.05x.",
        "Run-to-run spread (lowest / highest run median vs that arm's median): "
        + spread(s, {"bare": "bare loop", "pretrain": "pretrain", "compile": "compile"})
        + " (a 2-core machine shared with other jobs).",
        "Same training: the losses `pretrain` logs equal the bare loop's (max relative "
        f"difference {res['max_loss_diff']:.1e}).",
        f"Outside the steady state: one validation at the default eval_batches "
        f"({res['eval_batches']} x 8 blocks) costs {eval_steps:.1f} steps (at the default "
        f"eval_every=100: +{eval_steps / 100:.1%} per step); the end of a run (checkpoint, final "
        f"validation, export of final/) {res['wrap_up'] / ours['median']:.0f} steps. The loop's "
        f"own parts sum to {own_us:.0f} us per step ({own_us / step_us:.2%}).",
    ]
    replace_section(out, TITLES["loop"], body, notes)

    eager, compiled = s["pretrain"], s["compile"]
    first = res["first_step"]
    cold = first["compile"][0] - first["pretrain"][0]
    warm = statistics.median(a - b for a, b in zip(first["compile"][1:], first["pretrain"][1:]))
    rows = [
        ["eager (`train.compile=false`)", "1.000x", "1.000x"],
        [
            "`train.compile=true`",
            f"{compiled['median'] / eager['median']:.3f}x",
            f"{compiled['mean'] / eager['mean']:.3f}x",
        ],
    ]
    body = markdown_table(["`pretrain()`", "Median step vs eager", "Mean step vs eager"], rows)
    notes = [
        "The runs of the section above (same process, arms interleaved; `torch.compile` of each "
        "decoder layer's forward, inductor on CPU, fp32); medians of the runs' steady-state steps.",
        f"First compile, with a fresh inductor cache (the compiled run's first step minus the "
        f"eager run's): {cold:.1f} s = {cold / eager['median']:.0f} eager steps. In the same "
        f"process after `torch._dynamo.reset()` (inductor's caches warm), median "
        f"{warm:.2f} s. Graphs compiled per run: {sorted(set(res['graphs']))}.",
    ]
    replace_section(out, TITLES["compile"], body, notes)


# ---- 2 processes: torchrun workers -------------------------------------------------------------


def training_state_bytes(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds of parameters, gradients and optimizer states (local shards)."""

    def local(t):
        return getattr(t, "_local_tensor", t)  # a DTensor's shard in this process

    sizes = {"params": 0, "grads": 0, "optimizer": 0}
    for group in optimizer.param_groups:
        for p in group["params"]:
            sizes["params"] += local(p).nbytes
            if p.grad is not None:
                sizes["grads"] += local(p.grad).nbytes
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.dim() > 0:
                    sizes["optimizer"] += local(value).nbytes
    return sizes


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_job(job: dict, data, rank: int) -> dict:
    """One run with peak RSS marks: after the data, when the model is built (FSDP2: on the meta
    device), after `parallelize`, when the weights are in place (before the optimizer), after
    each step and after the checkpoint; the training state held after the last step."""
    from layerwise.train import PretrainConfig

    # the module (the attribute `layerwise.train.pretrain` is the function): marks around the
    # functions it calls
    module = importlib.import_module("layerwise.train.pretrain")
    marks: dict[str, float] = {"data prepared": max_rss_mib()}
    parallelize, build_optimizer = module.parallelize, module.build_optimizer

    def marked_parallelize(model, *args, **kwargs):
        marks["model built (FSDP2: on meta)"] = max_rss_mib()
        wrapped = parallelize(model, *args, **kwargs)
        marks["parallelize"] = max_rss_mib()
        return wrapped

    def marked_build_optimizer(*args, **kwargs):
        marks["weights in place"] = max_rss_mib()
        return build_optimizer(*args, **kwargs)

    module.parallelize, module.build_optimizer = marked_parallelize, marked_build_optimizer
    state, now = {}, {}

    def on_step(optimizer):
        step = sum(name.startswith("step") for name in marks) + 1
        marks[f"step {step}"] = max_rss_mib()
        now[f"step {step}"] = rss_mib()
        state.update(training_state_bytes(optimizer))

    cfg = PretrainConfig.from_dict(job["config"])
    clock = timed_pretrain(cfg, data, on_step, stop_at=job["stop_at"])
    marks["checkpoint written"] = max_rss_mib()
    return {"marks": marks, "now": now, "state": state, "times": clock.times}


def worker(job_file: str) -> None:
    """Run inside `torchrun --nproc_per_node 2`: the job of `job_file`, results to its "out"."""
    import torch.distributed as dist

    from layerwise.data import DataConfig, prepare_data
    from layerwise.train import PretrainConfig
    from layerwise.train.parallel import init_distributed, main_process_first
    from layerwise_core.testing import exit_torchrun_worker

    job = json.loads(Path(job_file).read_text())
    env = init_distributed()
    with main_process_first():
        data = prepare_data(DataConfig(**job["data"]), job["block_size"])
    rank = env.rank
    result: dict = {"rank": rank, "threads": torch.get_num_threads()}
    if job["kind"] == "steps":
        steady = {name: [] for name in job["configs"]}
        losses = {}
        for repeat in range(job["repeats"] + 1):  # round 0: warm-up
            for name in rotated(list(job["configs"]), repeat):
                raw = job["configs"][name]
                cfg = PretrainConfig.from_dict(raw)
                run = timed_pretrain(cfg, data).steady(job["warmup"])
                if rank == 0:
                    losses[name] = logged_losses(Path(cfg.train.out_dir))
                    shutil.rmtree(cfg.train.out_dir)
                    print(
                        f"[dist] round {repeat} {name}: median {run['median'] * 1e3:.1f} ms, "
                        f"mean {run['mean'] * 1e3:.1f} ms per step",
                        flush=True,
                    )
                dist.barrier()
                if repeat > 0:
                    steady[name].append(run)
        result.update(steady=steady, losses=losses)
    else:
        result.update(memory_job(job, data, rank))
        dist.barrier()
        if rank == 0:
            shutil.rmtree(job["config"]["train"]["out_dir"])
    Path(f"{job['out']}.{rank}.json").write_text(json.dumps(result))
    exit_torchrun_worker()


def launch(job: dict, tmp: Path, name: str, threads: int, env: dict | None = None) -> list[dict]:
    """Run `job` in `torchrun --standalone --nproc_per_node 2` with `threads` torch threads per
    process (and `env` set); the results of both ranks."""
    from layerwise_core.testing import run_torchrun

    job_file = tmp / f"{name}.json"
    job["out"] = str(tmp / f"{name}-result")
    job_file.write_text(json.dumps(job))
    env = {"OMP_NUM_THREADS": str(threads), **(env or {})}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        run_torchrun(Path(__file__), "--worker", job_file, nproc=2, timeout=3600)
    finally:
        for key, value in old.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
    return [json.loads(Path(f"{job['out']}.{r}.json").read_text()) for r in range(2)]


def bench_dist(args, tmp: Path) -> dict:
    data = {"vocab_size": 4096}
    configs = {
        name: run_config(
            tmp / f"run-{name}", SMALL, data, steps=args.steps, batch_size=4, parallelism=name
        )
        for name in ("ddp", "fsdp2")
    }
    job = {
        "kind": "steps",
        "data": data,
        "block_size": 128,
        "configs": configs,
        "repeats": args.dist_repeats,
        "warmup": args.warmup,
    }
    rank0 = launch(job, tmp, "dist", args.dist_threads)[0]
    losses = rank0["losses"]
    diff = max(abs(a - b) / abs(b) for a, b in zip(losses["fsdp2"], losses["ddp"]))
    return {"steady": summarize(rank0["steady"]), "loss_diff": diff, "threads": rank0["threads"]}


def write_dist(args, res: dict, out: Path) -> None:
    ddp, fsdp2 = res["steady"]["ddp"], res["steady"]["fsdp2"]
    rows = [
        ["ddp", "1.000x", "1.000x"],
        [
            "fsdp2",
            f"{fsdp2['median'] / ddp['median']:.3f}x",
            f"{fsdp2['mean'] / ddp['mean']:.3f}x",
        ],
    ]
    body = markdown_table(["train.parallelism", "Median step vs DDP", "Mean step vs DDP"], rows)
    notes = [
        f"`torchrun --standalone --nproc_per_node 2` (gloo), {res['threads']} torch thread per "
        "process, one launch: the loop section's model, data and global batch (4 blocks x 2 "
        f"processes), {args.steps} steps per run, the real `pretrain()` with "
        "`train.parallelism=ddp|fsdp2`; step times of rank 0 after step "
        f"{args.warmup}, medians of {args.dist_repeats} runs per arm interleaved after one warm-up "
        "round.",
        "Run-to-run spread (lowest / highest run median vs the arm's median): "
        + spread(res["steady"], {"ddp": "DDP", "fsdp2": "FSDP2"})
        + ".",
        f"Same training: FSDP2's logged losses equal DDP's within {res['loss_diff']:.1e} "
        "(relative).",
    ]
    replace_section(out, TITLES["dist"], body, notes)


def bench_memory(args, tmp: Path) -> dict:
    data = {"vocab_size": 32000}
    res = {}
    for malloc, env in (("default", {}), ("fixed", FIXED_MMAP)):
        for name in ("ddp", "fsdp2"):
            out = tmp / f"mem-{name}"
            config = run_config(
                out,
                {"preset": "llama-130m"},
                data,
                steps=4,
                batch_size=1,
                block_size=64,
                parallelism=name,
                warmup_steps=1,
                eval_batches=1,
            )
            job = {"kind": "memory", "data": data, "block_size": 64, "config": config}
            job["stop_at"] = 3
            ranks = launch(job, tmp, f"mem-{name}-{malloc}", args.dist_threads, env)
            res[name, malloc] = ranks
            marks = [{k: round(v) for k, v in r["marks"].items()} for r in ranks]
            print(f"[memory] {name}, {malloc} malloc: {json.dumps(marks)}", flush=True)
    return res


def write_memory(args, res: dict, out: Path) -> None:
    arms = [("ddp", "default"), ("fsdp2", "default"), ("ddp", "fixed"), ("fsdp2", "fixed")]
    marks = list(res["ddp", "default"][0]["marks"])
    last = [m for m in marks if m.startswith("step")][-1]

    def peak(arm, mark):  # the larger of the two processes
        return max(r["marks"][mark] for r in res[arm])

    def cell(arm, mark):
        a, b = (r["marks"][mark] for r in res[arm])
        return f"{a:.0f} / {b:.0f}"

    header = ["Peak RSS (MiB) up to", "DDP", "FSDP2", "DDP, fixed mmap", "FSDP2, fixed mmap"]
    rows = [[mark] + [cell(arm, mark) for arm in arms] for mark in marks]
    rows.append(
        [f"RSS now, after {last}"]
        + [" / ".join(f"{r['now'][last]:.0f}" for r in res[arm]) for arm in arms]
    )
    ratio = {
        malloc: peak(("fsdp2", malloc), last) / peak(("ddp", malloc), last)
        for malloc in ("default", "fixed")
    }
    rows.append(
        [
            f"**FSDP2 / DDP, peak up to {last}**",
            "",
            f"**{ratio['default']:.2f}x**",
            "",
            f"**{ratio['fixed']:.2f}x**",
        ]
    )
    body = markdown_table(header, rows)
    body += "\n\nTraining state each process holds after a step (its local shards):\n\n"
    body += markdown_table(
        ["MiB", "parameters", "gradients", "AdamW moments", "total"],
        [
            [name]
            + [f"{state[k] / MIB:.0f}" for k in ("params", "grads", "optimizer")]
            + [f"{sum(state.values()) / MIB:.0f}"]
            for name, state in (
                ("DDP", res["ddp", "default"][0]["state"]),
                ("FSDP2", res["fsdp2", "default"][0]["state"]),
            )
        ],
    )
    times = {arm: res[arm][0]["times"] for arm in arms}
    step_ratio = statistics.median(
        (b - a) / (d - c)
        for arm_f, arm_d in ((arms[1], arms[0]), (arms[3], arms[2]))
        for (a, b), (c, d) in zip(
            zip(times[arm_f], times[arm_f][1:]), zip(times[arm_d], times[arm_d][1:])
        )
    )
    threads = res["ddp", "default"][0]["threads"]

    def now(arm):
        return [r["now"][last] for r in res[arm]]

    # FSDP2's RSS after a step beyond its data-prepared RSS and its training state
    state = sum(res["fsdp2", "default"][0]["state"].values()) / MIB
    beyond = [
        n - r["marks"]["data prepared"] - state
        for n, r in zip(now(("fsdp2", "fixed")), res["fsdp2", "fixed"])
    ]
    kept = [a - b for a, b in zip(now(("fsdp2", "default")), now(("fsdp2", "fixed")))]
    notes = [
        "llama-130m (hidden 768, 12 layers, ffn 2048, vocab 32000 BPE: 134.1M parameters), fp32, "
        "AdamW, blocks of 64, 1 block per process, `train.steps=4` stopped after step 3 "
        "(`stop_at=3`: a sharded DCP checkpoint is written); one fresh "
        "`torchrun --standalone --nproc_per_node 2` launch per column (gloo, "
        f"{threads} torch thread per process); `rank 0 / rank 1`.",
        "Peak RSS = `resource.getrusage(RUSAGE_SELF).ru_maxrss` of each process, a high-water "
        "mark since its start (imports and data included), read at marks along `pretrain`: the "
        "data prepared; `build_model` done (FSDP2: on the meta device, materialised shard by "
        "shard after `parallelize`); `parallelize` done; the initial weights in place (before the "
        "optimizer); each optimizer step; the checkpoint written. `RSS now` = VmRSS at the end "
        "of that step (gradients still held).",
        "Fixed mmap: `MALLOC_MMAP_THRESHOLD_=131072` (glibc's malloc, set for the launch). With "
        "it FSDP2's RSS after a step is the data-prepared RSS + its training state + "
        f"{min(beyond):.0f}-{max(beyond):.0f} MiB; by default {min(kept):.0f}-{max(kept):.0f} MiB "
        "more. Our reading: glibc raises its mmap threshold (up to 32 MiB) each time it frees an mmapped "
        "block, after which FSDP2's per-layer all-gather / reduce-scatter buffers (~27 MiB per "
        "decoder layer here) come from the heap, which keeps them once freed.",
        f"Informative only (2 step intervals per run): FSDP2 / DDP step time at 130M "
        f"{step_ratio:.2f}x.",
    ]
    replace_section(out, TITLES["memory"], body, notes)


# ---- docs/benchmarks.md --------------------------------------------------------------------------


def replace_section(path: Path, title: str, body: str, notes: list[str]) -> None:
    """Remove this script's previous section `## title (...)`, then append the new one."""
    if path.exists():
        kept, skipping = [], False
        for line in path.read_text().splitlines(keepends=True):
            if line.startswith("## "):
                skipping = line.startswith(f"## {title} (")
            if not skipping:
                kept.append(line)
        path.write_text("".join(kept))
    command = " ".join([f"python {SCRIPT}", *sys.argv[1:]])
    print(append_section(path, title, command, body, notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per arm (loop, compile)")
    parser.add_argument("--dist-repeats", type=int, default=5, help="runs per arm (dist)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the steady state")
    parser.add_argument("--threads", type=int, help="torch threads of the loop part (default: all)")
    parser.add_argument("--dist-threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--parts", default="loop,dist,memory", help="comma-separated")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, unknown = parser.parse_known_args()  # `nox -s bench -- ...` passes every script's flags
    if args.worker:
        worker(args.worker)
        return
    if unknown:
        print(f"bench_pipeline: ignoring {unknown}", file=sys.stderr)
    if args.repeats < 5 or args.dist_repeats < 5:
        print("bench_pipeline: fewer than 5 repeats: not for docs/benchmarks.md", file=sys.stderr)
    if torch.cuda.is_available():
        print(
            "bench_pipeline: a CPU benchmark; on this machine pretrain uses CUDA", file=sys.stderr
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        if "loop" in parts:
            write_loop(args, bench_loop(args), out)
        if "dist" in parts:
            write_dist(args, bench_dist(args, Path(tmp)), out)
        if "memory" in parts:
            write_memory(args, bench_memory(args, Path(tmp)), out)


if __name__ == "__main__":
    main()
