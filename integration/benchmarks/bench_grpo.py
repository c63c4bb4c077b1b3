"""GRPO on CPU for SmolLM2-135M-Instruct (issue 23): samples per second of one optimizer step of
`objective: grpo`, split into generation, log-prob forward, backward and optimizer, and peak RSS.

    python integration/benchmarks/bench_grpo.py [--repeats 5] [--warmup 1]

One step is what `layerwise finetune` does per optimizer step of the spec's RL arm (spec
small-reasoning-lms.md §5): 4 prompts x G = 8 completions (`train.batch_size` 32, one
micro-batch), temperature 1.0, `max_completion_length` 96, beta 0 (no reference model), loss
dapo, full fine-tuning with AdamW (lr 1e-6, TRL's default), gradient clipping at 1.0, fp32. The
objective is the real `layerwise.finetune.grpo.GRPOObjective`; its `generate` (HF sampling with a
KV cache, then the exact-match reward and the group advantages) is timed by a wrapper, the rest
of `loss` (the policy's log-probs of the 32 completions and the clipped surrogate) is the
"log-prob forward", then `backward`, then clipping + `AdamW.step` + `zero_grad`.

Prompts: level-1..3 problems of `reasoning_splits` (a fresh 4 per step, the same sequence for
every invocation), in the model's chat template (`data.prompt_format: chat`, `--prompt-format`). The time of a step depends on how long the
sampled completions are (a completion stops at EOS), so the table also gives the generated tokens
per step. Each row: the median over `--repeats` steps after `--warmup` steps. Peak RSS:
`resource.getrusage` (the process's high-water mark, model + AdamW state + activations).

Writes (replacing its previous one) a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from layerwise_core.benchmarking import append_section, markdown_table

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "integration/benchmarks/bench_grpo.py"
TITLE = "integration: GRPO step on SmolLM2-135M-Instruct (G 8 x 4 prompts, 96 new tokens)"
PARTS = ("generation", "logprob_forward", "backward", "optimizer")
MIB = 2**20


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerwise.data.pretrained import smollm2_folder
    from layerwise.finetune.grpo import GRPOConfig
    from layerwise.finetune.objectives import ObjectiveContext
    from layerwise.finetune.reasoning_data import reasoning_splits

    folder = smollm2_folder(args.cache)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rss_model = peak_rss_mib()
    cfg = GRPOConfig(
        num_generations=args.generations,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
    )
    objective = cfg.build()
    steps = args.warmup + args.repeats
    records = reasoning_splits(train=steps * args.prompts, val=0, test=0)["train"]
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)
    extra = {}
    if "prompt_format" in {f.name for f in dataclasses.fields(ObjectiveContext)}:
        extra["prompt_format"] = args.prompt_format
    elif args.prompt_format != "alpaca":
        raise SystemExit("bench_grpo: this layerwise has no data.prompt_format: use alpaca")
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        objective.setup(
            ObjectiveContext(
                **extra,
                model=model,
                base_model=model,
                tokenizer=tokenizer,
                device=torch.device("cpu"),
                seed=0,
                out_dir=Path(tmp),
                records=records,
                instruction_field="instruction",
                answer_field="answer",
                max_length=256,
                total_steps=steps,
            )
        )
        timed = {"generation": 0.0}
        generate = objective.generate

        def timed_generate(*a, **kw):
            t = time.perf_counter()
            rollout = generate(*a, **kw)
            timed["generation"] += time.perf_counter() - t
            timed["rollout"] = rollout
            return rollout

        objective.generate = timed_generate
        model.train()
        rows = []
        for step in range(steps):
            chosen = records[step * args.prompts : (step + 1) * args.prompts]
            timed["generation"] = 0.0
            t0 = time.perf_counter()
            if hasattr(objective, "begin_step"):  # the loop samples the whole step there
                objective.begin_step(model, step, [chosen])
            loss, metrics = objective.loss(model, chosen, {}, step, 0)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            rollout = timed["rollout"]
            row = {
                "generation": timed["generation"],
                "logprob_forward": (t1 - t0) - timed["generation"],
                "backward": t2 - t1,
                "optimizer": t3 - t2,
                "total": t3 - t0,
                "tokens": float(rollout["length"].sum()),
                "prompt_tokens": float(rollout["prompt_mask"].sum()),
                "reward": metrics["reward"],
                "zero_std": metrics["frac_reward_zero_std"],
                "truncated": metrics["truncated_ratio"],
            }
            rows.append(row)
            print(f"step {step}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    kept = rows[args.warmup :]
    median = {k: statistics.median(r[k] for r in kept) for k in rows[0]}
    return {
        "median": median,
        "rows": rows,
        "samples": args.prompts * args.generations,
        "rss_model": rss_model,
        "rss_peak": peak_rss_mib(),
        "parameters": sum(p.numel() for p in params),
    }


def write(args, result: dict, path: Path) -> None:
    m, samples = result["median"], result["samples"]
    total = m["total"]
    body_rows = [
        [part.replace("_", " "), f"{m[part]:.2f} s", f"{100 * m[part] / total:.0f}%"]
        for part in PARTS
    ]
    body_rows.append(["whole step", f"{total:.2f} s", "100%"])
    table = markdown_table(["Part of one GRPO step", "Median time", "Share"], body_rows)
    summary = markdown_table(
        ["Samples / s", "Generated tokens / s", "Generated tokens / step", "Peak RSS"],
        [
            [
                f"{samples / total:.2f}",
                f"{m['tokens'] / m['generation']:.0f}",
                f"{m['tokens']:.0f} (of {samples * args.new_tokens})",
                f"{result['rss_peak']:.0f} MiB (model loaded: {result['rss_model']:.0f} MiB)",
            ]
        ],
    )
    notes = [
        f"SmolLM2-135M-Instruct ({result['parameters'] / 1e6:.1f}M parameters, fp32), "
        f"{args.prompts} prompts x G = {args.generations} = {samples} completions per step, "
        f"temperature 1.0, max_completion_length {args.new_tokens}, beta 0, loss dapo, full "
        f"fine-tuning, AdamW, clip 1.0, prompt format {args.prompt_format}; "
        "`GRPOObjective.begin_step` / `loss` of layerwise.finetune.grpo",
        f"Medians over {args.repeats} steps after {args.warmup} warm-up step(s); the machine's 2 "
        "cores were shared with other jobs (two background studies), so expect noise of up to 2x",
        f"B0's rollouts: mean reward {statistics.fmean(r['reward'] for r in result['rows']):.2f}, "
        f"share of zero-std groups {statistics.fmean(r['zero_std'] for r in result['rows']):.2f}, "
        f"share truncated at {args.new_tokens} tokens "
        f"{statistics.fmean(r['truncated'] for r in result['rows']):.2f}",
    ]
    if args.repeats < 5:
        notes.append(f"Only {args.repeats} repeats (a busy machine): indicative, not settled")
    body = table + "\n\n" + summary
    if path.exists():
        kept, skipping = [], False
        for line in path.read_text().splitlines(keepends=True):
            if line.startswith("## "):
                skipping = line.startswith(f"## {TITLE} (")
            if not skipping:
                kept.append(line)
        path.write_text("".join(kept))
    command = " ".join([f"python {SCRIPT}", *sys.argv[1:]])
    print(append_section(path, TITLE, command, body, notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the medians")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--prompt-format", default="chat", choices=["alpaca", "chat"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="default: $LAYERWISE_CACHE/smollm2"
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args, unknown = parser.parse_known_args()  # `nox -s bench -- ...` passes every script's flags
    if unknown:
        print(f"bench_grpo: ignoring {unknown}", file=sys.stderr)
    if torch.cuda.is_available():
        print("bench_grpo: a CPU benchmark; this machine has CUDA", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench(args)
    if not args.no_write:
        write(args, result, Path(args.out))


if __name__ == "__main__":
    main()
