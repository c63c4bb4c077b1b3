"""Train a tiny masked diffusion LM on generated additions, then decode it with every strategy of
dlm-decode at the same generation length (LLaDA, Prophet, Fast-dLLM without cache / prefix / dual
cache, SOAR as released and SOAR's position beams, Elastic-Cache, NAP's parallel-forced decoding);
report accuracy vs NFE and wall time, and how often the answer is already right at half the steps
(Prophet's observation). Dream's sampler is left out: it is written for shifted (Dream-style)
models, and this model is LLaDA-style (output i scores token i).

    python examples/dlm_arithmetic.py                      # ~10-15 CPU minutes (1 thread): train + evaluate
    python examples/dlm_arithmetic.py --smoke              # seconds: the same code on a toy budget
    python examples/dlm_arithmetic.py --report             # + append to docs/reproductions.md

Task (character tokens, left to right), the sum of two 2-digit numbers:

    prompt      "47+85?"
    generation  "47+85=132$$$"                  a restatement, '=' (forced: the answer anchor),
                                                three answer digits, EOS '$' padding

The generation region has 12 positions decoded in blocks of 4; the answer sits at generation
offsets 6-8, right after the anchor (as Prophet's released evaluation forces "The answer is" and
reads the positions after it). The decoders are compared at several checkpoints of one training
run (`--eval-at`) and on the final model, so that hesitant and confident models are both seen.
The model is layerwise_core's bidirectional Llama trained with the masked-diffusion SFT objective
of `layerwise.train.mdm` (prompt never masked, loss 1/t-weighted).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

import torch

from dlm_decode import (
    SOAR,
    ElasticCache,
    FastDLLM,
    LLaDA,
    ParallelForced,
    Prophet,
    SOARBeam,
    StagedThresholds,
    generate,
)
from layerwise.train.mdm import masked_diffusion_loss
from layerwise_core import set_seed
from layerwise_core.tiny_models import tiny_bidirectional

ROOT = Path(__file__).resolve().parents[1]
CHARS = "0123456789+=?$"
TOKEN = {c: i for i, c in enumerate(CHARS)}
EOS, MASK, VOCAB = TOKEN["$"], len(CHARS), 16
PROMPT_LEN, GEN_LEN, BLOCK = 6, 12, 4
ANCHOR_OFFSET, ANSWER_START, ANSWER_LEN = 5, 6, 3
PARALLEL_FORCED = (1, 2, 4)  # NAP tokens per step (one segment: the whole generation region)


def encode(text: str) -> list[int]:
    return [TOKEN[c] for c in text]


def problem(a: int, b: int) -> tuple[list[int], list[int]]:
    prompt = f"{a:02d}+{b:02d}?"
    answer = f"{a:02d}+{b:02d}={a + b:03d}".ljust(GEN_LEN, "$")
    return encode(prompt), encode(answer)


def split(test_size: int, seed: int) -> list[tuple[int, int]]:
    """Held-out test pairs; training draws any other pair."""
    pairs = [(a, b) for a in range(100) for b in range(100)]
    random.Random(seed).shuffle(pairs)
    return sorted(pairs[:test_size])


def build_model(seed: int):
    return tiny_bidirectional(
        seed=seed,
        mask_token_id=MASK,
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )


def sample_batch(rng: random.Random, batch: int, held_out: set) -> torch.Tensor:
    rows = []
    while len(rows) < batch:
        pair = (rng.randrange(100), rng.randrange(100))
        if pair not in held_out:
            prompt, answer = problem(*pair)
            rows.append(prompt + answer)
    return torch.tensor(rows)


def train(model, held_out, steps, batch, lr, seed, checkpoint=None, log_every: int = 100):
    """AdamW with warm-up and cosine decay; `checkpoint(step, model)` runs at every log step."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed + 1)
    held_out = set(held_out)
    prompt_lengths = torch.full((batch,), PROMPT_LEN)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        ),
    )
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        loss = masked_diffusion_loss(
            model,
            sample_batch(rng, batch, held_out),
            MASK,
            prompt_lengths=prompt_lengths,
            generator=gen,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            mean = sum(losses[-log_every:]) / len(losses[-log_every:])
            print(
                f"step {step}/{steps} loss {mean:.4f} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
            if checkpoint is not None:
                checkpoint(step, model.eval())
                model.train()
    return model.eval(), time.perf_counter() - t0, losses


def arms(steps: int) -> dict:
    half = StagedThresholds(early=math.inf, mid=-math.inf, late=-math.inf, early_until=0.5)
    answer = {"answer_start": ANSWER_START, "answer_length": ANSWER_LEN}
    return {
        "LLaDA (baseline)": LLaDA(steps=steps, block_length=BLOCK),
        "Prophet (released thresholds 7.5/5/2.5)": Prophet(
            steps=steps, block_length=BLOCK, **answer
        ),
        "Prophet, anchor-free block region (ours)": Prophet(
            steps=steps, block_length=BLOCK, region="block"
        ),
        "LLaDA, argmax fill at half the steps": Prophet(
            steps=steps, block_length=BLOCK, thresholds=half, **answer
        ),
        "Fast-dLLM threshold 0.9": FastDLLM(block_length=BLOCK, threshold=0.9, steps=steps),
        "Fast-dLLM threshold 0.9 + prefix cache": FastDLLM(
            block_length=BLOCK, threshold=0.9, steps=steps, cache="prefix"
        ),
        "Fast-dLLM threshold 0.9 + dual cache": FastDLLM(
            block_length=BLOCK, threshold=0.9, steps=steps, cache="dual"
        ),
        "SOAR (released code)": SOAR(steps=steps, block_length=BLOCK),
        "SOAR beams (paper), B=2": SOARBeam(steps=steps, block_length=BLOCK, beam_width=2),
        "SOAR beams (paper), B=4": SOARBeam(steps=steps, block_length=BLOCK, beam_width=4),
        # window 4 = the block length; 16 is the paper's default (wider than our 11 masks)
        "Elastic-Cache gamma 1 (always refresh), window 4": ElasticCache(gamma=1.0, window=BLOCK),
        "Elastic-Cache gamma 0.9, window 4": ElasticCache(gamma=0.9, window=BLOCK),
        "Elastic-Cache gamma 0.9, window 16 (default)": ElasticCache(gamma=0.9, window=16),
        **{
            f"Parallel-forced (NAP), {k} token(s)/step": ParallelForced(tokens_per_step=k)
            for k in PARALLEL_FORCED
        },
    }


def evaluate(model, triples, steps: int) -> dict:
    prompts = torch.tensor([problem(*t)[0] for t in triples])
    truth = torch.tensor([problem(*t)[1] for t in triples])
    anchor = {ANCHOR_OFFSET: TOKEN["="]}
    answer = slice(ANSWER_START, ANSWER_START + ANSWER_LEN)
    results = {}
    for name, strategy in arms(steps).items():
        out = generate(model, prompts, strategy, gen_length=GEN_LEN, constraints=anchor)
        correct = (out.generated[:, answer] == truth[:, answer]).all(1)
        whole = (out.generated == truth).all(1)
        results[name] = {
            "accuracy": correct.double().mean().item(),
            "exact_sequence": whole.double().mean().item(),
            "nfe": out.stats.nfe.double().mean().item(),
            "nfe_std": out.stats.nfe.double().std().item(),
            "speedup": steps / out.stats.nfe.double().mean().item(),
            "sequence_evals": out.stats.sequence_evals.double().mean().item(),
            "early_exits": (out.exit_step > 0).double().mean().item(),
            "row_wall_s": out.stats.row_wall_s.double().mean().item(),
            "wall_s": out.stats.wall_s,
        }
        print(f"{name}: {results[name]}", file=sys.stderr)
    return results


def plot(results: dict, path: Path, steps: int) -> None:
    """One panel per checkpoint (accuracy vs mean NFE), then the final model vs mean row wall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final_label, final = list(results.items())[-1]
    panels = [(label, r, "nfe", 1.0) for label, r in results.items()]
    panels.append((f"{final_label}: wall time", final, "row_wall_s", 1e3))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    for ax, (label, arms_results, key, scale) in zip(axes[0], panels):
        for name, r in arms_results.items():
            ax.scatter(scale * r[key], 100 * r["accuracy"], s=40)
            ax.annotate(name, (scale * r[key], 100 * r["accuracy"]), fontsize=5, xytext=(3, 2),
                        textcoords="offset points")  # fmt: skip
        if key == "nfe":
            ax.axvline(steps, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("forward steps per problem (mean NFE)")
            ax.set_xlim(0, steps + 1)
        else:
            ax.set_xlabel("mean row wall time (ms, batch of all problems, 1 CPU thread)")
        ax.set_ylabel("answer accuracy (%)")
        ax.set_title(label, fontsize=10)
    fig.suptitle("Tiny DLM on 2-digit additions, generation length 12: accuracy vs NFE / wall")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def report(args, results, train_s, losses, eval_s, params) -> None:
    from layerwise_core.benchmarking import append_section, markdown_table

    rows = []
    for label, arms_results in results.items():
        for name, r in arms_results.items():
            exits = f"{100 * r['early_exits']:.0f}%" if "Prophet" in name or "half" in name else "-"
            rows.append(
                [
                    label,
                    name,
                    f"{100 * r['accuracy']:.1f}%",
                    f"{r['nfe']:.2f} ± {r['nfe_std']:.2f}",
                    f"{r['sequence_evals']:.2f}",
                    f"{1e3 * r['row_wall_s']:.0f}",
                    f"{r['wall_s']:.2f}",
                    exits,
                ]
            )
    header = [
        "Model",
        "Decoder",
        "Answer accuracy",
        "NFE (mean ± sd)",
        "Sequences fed",
        "Row wall, mean (ms)",
        "Batch wall (s)",
        "Exits",
    ]
    lines = []
    for label, r in results.items():
        base, half = r["LLaDA (baseline)"], r["LLaDA, argmax fill at half the steps"]
        prophet = r["Prophet (released thresholds 7.5/5/2.5)"]
        lines.append(
            f"- {label}: answer correct after an argmax fill at half the steps "
            f"{100 * half['accuracy']:.1f}% vs {100 * base['accuracy']:.1f}% after all "
            f"{args.steps}; Prophet (released thresholds) {100 * prophet['accuracy']:.1f}% at "
            f"{prophet['nfe']:.2f} NFE ({prophet['speedup']:.2f}× fewer steps)."
        )
    body = "\n".join(
        [
            "**Claims** (each paper, on LLaDA-8B / Dream-7B and GSM8K-like tasks): Prophet "
            "(arXiv:2508.19982): the answer is often right long before decoding ends, and early "
            "commit on the top-2 logit gap cuts steps up to 3.4×; Fast-dLLM: threshold-parallel "
            "decoding and prefix / dual KV caches cut NFE and wall time at near-equal accuracy; "
            "SOAR (arXiv:2602.10953): position beams when unsure, parallel commits when sure; "
            "Elastic-Cache (arXiv:2510.14973): refresh the cache only on attention drift; NAP "
            "(arXiv:2602.23225): forcing k tokens per step degrades standard models (see the NAP "
            "section for its data side).",
            "",
            f"**Setup**: a {params / 1e6:.2f}M-parameter bidirectional Llama (hidden 128, 3 layers) "
            "trained here with the masked-diffusion SFT objective (`layerwise.train.mdm`, prompt "
            f"never masked) for {args.train_steps} steps of {args.batch} problems (AdamW lr "
            f"{args.lr}, warm-up + cosine, seed {args.seed}, {train_s / 60:.1f} CPU min with 1 "
            f"thread, final loss {sum(losses[-100:]) / len(losses[-100:]):.3f}) on 2-digit "
            "additions (`47+85?` → `47+85=132$$$`), drawn at random except "
            f"{args.test_size} held-out pairs used for evaluation. Evaluated at steps "
            f"{args.eval_at} (undertrained) and at the end. Decoding: generation length "
            f"{GEN_LEN}, budget {args.steps} steps (LLaDA: one token per step), blocks of {BLOCK}, "
            "T = 0, '=' forced at generation offset 5 in every arm (the answer anchor; 11 masks "
            f"left), answer = offsets 6-8, all {args.test_size} problems in one batch (rows exit "
            "on their own). NFE = forward steps a row took part in; *sequences fed* also counts "
            "every SOAR beam (B per step). Wall: *row* = seconds from the start until the row had "
            "no mask left, averaged; *batch* = the whole call. Parallel-forced runs one segment "
            "(the whole region, no blocks); Elastic-Cache has no blocks (its window slides over "
            "the leftmost masks). Dream's sampler is not run: it expects shifted (Dream-style) "
            f"logits. Evaluation took {eval_s:.0f} s. One training seed (CPU budget); wall times "
            "come from a shared 2-core machine and carry its noise.",
            "",
            markdown_table(header, rows),
            "",
            *lines,
            "",
            f"![accuracy vs NFE and wall time](figures/{args.figure.name})",
        ]
    )
    command = shlex.join(["python", "examples/dlm_arithmetic.py", *sys.argv[1:]])
    path = args.report_file
    if not path.exists():
        path.write_text("# Reproductions\n\n")
    append_section(
        path, "dlm-decode: every strategy on a tiny DLM trained on additions", command, body
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument(
        "--eval-at", default="400,600,800,1000", help="also evaluate at these steps (comma list)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=GEN_LEN, help="decoding steps (budget)")
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: fastest on a busy CPU)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny budget: checks that everything runs"
    )
    parser.add_argument("--report", action="store_true", help="append to --report-file")
    parser.add_argument(
        "--report-file", type=Path, default=ROOT / "docs" / "reproductions.md",
        help="markdown file the --report section is appended to",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "dlm_arithmetic")
    parser.add_argument(
        "--figure", type=Path, default=ROOT / "docs" / "figures" / "dlm_arithmetic.png"
    )
    args = parser.parse_args()
    if args.smoke:
        args.train_steps, args.eval_at, args.test_size = 30, "10", 24
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    test_pairs = split(args.test_size, args.seed)
    results, eval_s = {}, 0.0
    eval_at = {int(step) for step in args.eval_at.split(",")}

    def checkpoint(step, model):
        nonlocal eval_s
        if step in eval_at or step == args.train_steps:
            t0 = time.perf_counter()
            label = f"step {step}" + (" (final)" if step == args.train_steps else "")
            results[label] = evaluate(model, test_pairs, args.steps)
            eval_s += time.perf_counter() - t0

    model = build_model(args.seed)
    params = sum(p.numel() for p in model.parameters())
    log_every = 10 if args.smoke else 100
    model, train_s, losses = train(model, test_pairs, args.train_steps, args.batch, args.lr,
                                   args.seed, checkpoint, log_every)  # fmt: skip
    train_s -= eval_s
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"train_s": train_s, "losses": losses, "results": results}, indent=2)
    )
    if not args.smoke:
        model.save_pretrained(args.out / "model")
    if args.report:
        plot(results, args.figure, args.steps)
        report(args, results, train_s, losses, eval_s, params)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
