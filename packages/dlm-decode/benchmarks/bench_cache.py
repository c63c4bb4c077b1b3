"""Fast-dLLM prefix / dual caches and Elastic-Cache vs no cache: wall time per generated token.

    nice -n 10 python packages/dlm-decode/benchmarks/bench_cache.py [--gen-lengths 256 512]
        [--repeats 5] [--repeats-long 3] [--threads 1] [--device cpu|cuda] [--output PATH]

A native LLaDA model (`dlm_decode.LLaDAModelLM`, random weights, fp32, batch 1, no remote code),
prompt of 64 random tokens, blocks of 32. Random weights are never confident, so every arm runs a
fixed one-token-per-step schedule and the arms do the same number of commits:

- Fast-dLLM (`FastDLLM(steps=gen_length, threshold=None, cache=None | "prefix" | "dual")`): LLaDA's
  low-confidence schedule, one token per step in each block of 32.
- Elastic-Cache (`ElasticCache`, the module's defaults gamma 0.9, window 16, one tracked token per
  layer) with `threshold=1.0`: the threshold rule commits every p >= 1 (never, short of a softmax
  that rounds to 1) plus the most confident, so one token per step; and the default threshold 0.9
  as it is (on random weights it also commits one token per step: the NFE column shows it).

Each arm's tokens are compared with the uncached run of the same schedule (cache approximation is
measured, not assumed): Fast-dLLM's caches with `FastDLLM(cache=None)`, Elastic-Cache with
`ElasticCache(gamma=1.0)`, which refreshes every layer at every step, i.e. exact uncached decoding
of the same sliding-window schedule (its own test guards that). Elastic-Cache has no blocks (a
window of the 16 leftmost masks), so its tokens are also compared with Fast-dLLM's uncached run,
for information only.

CPU: ratios of medians of interleaved repeats in one process (each arm runs once untimed first:
the warm-up, which also gives its NFE and tokens). `--device cuda` runs the same on a GPU; the
timing helper synchronises CUDA around every repeat.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from dlm_decode import ElasticCache, FastDLLM, LLaDAModelLM, generate
from dlm_decode.models import LLaDAConfig
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "benchmarks.md"
UNCACHED = "Fast-dLLM, no cache"
ELASTIC_EXACT = "Elastic-Cache, gamma 1 (exact, untimed)"


def build_model(args: argparse.Namespace) -> LLaDAModelLM:
    """A random-weight LLaDA whose head never scores the [MASK] id above the rest.

    The output row of [MASK] (the last id) is zeroed, so its logit is 0 while the most probable
    of the other ids is positive: a fixed schedule never commits [MASK], which would leave the
    position masked and make the arms' step counts differ."""
    torch.manual_seed(args.seed)
    config = LLaDAConfig(
        d_model=args.d_model,
        n_heads=args.heads,
        n_kv_heads=args.heads,
        n_layers=args.layers,
        mlp_hidden_size=4 * args.d_model,
        vocab_size=args.vocab,
        embedding_size=args.vocab,
        max_sequence_length=args.prompt + max(args.gen_lengths),
        eos_token_id=args.vocab - 2,
        pad_token_id=args.vocab - 2,
        mask_token_id=args.vocab - 1,
        init_device="cpu",
    )
    model = LLaDAModelLM(config).float().eval()
    with torch.no_grad():
        model.get_output_embeddings().weight[args.vocab - 1].zero_()
    return model.to(args.device)


def arms(gen_length: int, block: int) -> dict[str, object]:
    fixed = {"block_length": block, "threshold": None, "steps": gen_length}
    return {
        UNCACHED: FastDLLM(cache=None, **fixed),
        "Fast-dLLM, prefix cache": FastDLLM(cache="prefix", **fixed),
        "Fast-dLLM, dual cache": FastDLLM(cache="dual", **fixed),
        "Elastic-Cache, threshold 1 (one token/step)": ElasticCache(threshold=1.0),
        "Elastic-Cache, defaults (threshold 0.9)": ElasticCache(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gen-lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (>= 5 asked)")
    parser.add_argument(
        "--repeats-long",
        type=int,
        default=None,
        help="repeats at gen lengths > 256 (default: same)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA build of torch and a GPU")
    if args.device == "cpu" and torch.cuda.is_available():
        parser.error("a GPU is visible: run with --device cuda (or CUDA_VISIBLE_DEVICES='')")
    torch.set_num_threads(args.threads)
    model = build_model(args)
    prompt = torch.randint(0, args.vocab - 2, (1, args.prompt), device=args.device)

    def run(strategy, gen_length):
        return generate(model, prompt, strategy, gen_length=gen_length)

    rows, ratios, repeats_used = [], {}, {}
    for gen_length in args.gen_lengths:
        strategies = arms(gen_length, args.block)
        outputs = {name: run(s, gen_length) for name, s in strategies.items()}  # warm-up
        exact = ElasticCache(gamma=1.0, threshold=1.0)
        outputs[ELASTIC_EXACT] = run(exact, gen_length)
        refreshes = {
            name: len(s.refresh_log[0]) - 1
            for name, s in [*strategies.items(), (ELASTIC_EXACT, exact)]
            if isinstance(s, ElasticCache)
        }
        repeats = args.repeats if gen_length <= 256 else (args.repeats_long or args.repeats)
        repeats_used[gen_length] = repeats
        print(f"gen {gen_length}: warm-up done, timing {repeats} repeats", flush=True)
        medians = interleaved_medians(
            {n: (lambda s=s, g=gen_length: run(s, g)) for n, s in strategies.items()},
            repeats,
            warmup=0,
        )
        base = medians[UNCACHED]
        reference = outputs[UNCACHED].generated
        for name in [*strategies, ELASTIC_EXACT]:
            out = outputs[name]
            elastic = name.startswith("Elastic")
            own = outputs[ELASTIC_EXACT].generated if elastic else reference
            agree = (out.generated == own).float().mean().item()
            vs_fast = (out.generated == reference).float().mean().item()
            seconds = medians.get(name)
            ratio = base / seconds if seconds else None
            if seconds and name != UNCACHED:
                ratios[(gen_length, name)] = ratio
            rows.append(
                [
                    gen_length,
                    name,
                    int(out.stats.nfe[0]),
                    refreshes.get(name, "-"),
                    f"{1e3 * seconds / gen_length:.2f} ms" if seconds else "-",
                    f"{ratio:.2f}×" if ratio else "-",
                    f"{agree:.3f}" + (" (vs gamma 1)" if elastic else ""),
                    f"{vs_fast:.3f}",
                ]
            )
            print(rows[-1], flush=True)
    cached = [n for n in arms(args.gen_lengths[0], args.block) if n != UNCACHED]
    growth = []
    if len(args.gen_lengths) > 1:
        short, long = args.gen_lengths[0], args.gen_lengths[-1]
        for name in cached:
            a, b = ratios[(short, name)], ratios[(long, name)]
            growth.append(f"{name}: {a:.2f}× → {b:.2f}× ({'grows' if b > a else 'does not grow'})")
    body = markdown_table(
        [
            "Gen length",
            "Arm",
            "NFE",
            "Full refreshes",
            "Time / token",
            "Speed-up vs no cache",
            "Token agreement with uncached",
            "Agreement with Fast-dLLM uncached",
        ],
        rows,
    )
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    repeat_text = ", ".join(f"{r} at {g}" for g, r in repeats_used.items())
    notes = [
        f"`LLaDAModelLM` (random weights, seed {args.seed}): {args.layers} layers, d_model "
        f"{args.d_model}, {args.heads} heads, MLP {4 * args.d_model}, vocabulary {args.vocab}, "
        f"fp32, batch 1, prompt {args.prompt}, blocks of {args.block}, device {args.device}.",
        "Fast-dLLM: fixed schedule, steps = gen length, threshold None (one token per step per "
        "block). Elastic-Cache: gamma 0.9, window 16, track_num 1; threshold 1.0 commits one "
        "token per step; the default threshold 0.9 is reported as it is. [MASK]'s output row is "
        "zeroed so no arm ever commits [MASK].",
        f"Medians of interleaved repeats ({repeat_text}) of a whole generate() call, after one "
        f"untimed run per arm, one process, {args.threads} torch thread(s). Time / token = "
        "median / gen length; speed-up = uncached median / arm median (same gen length).",
        "Token agreement: fraction of generated positions equal to the uncached run of the same "
        "schedule (Fast-dLLM: cache=None; Elastic-Cache: gamma = 1, a full pass at every step, "
        "run once untimed). Full refreshes (Elastic-Cache): steps after the first whose pass "
        "recomputed all positions from some layer (gamma 1: every step).",
        *(["Speed-up growth with gen length: " + "; ".join(growth) + "."] if growth else []),
        "`--device cuda` runs the same on a GPU (CUDA-synchronised timing); "
        + (
            "these rows are GPU rows."
            if args.device == "cuda"
            else "no GPU was lent for these rows, that path is untested here."
        ),
    ]
    title = f"dlm-decode: KV caches vs no cache, time per token ({args.layers}-layer LLaDA)"
    text = append_section(args.output, title, command, body, notes=notes)
    print(text)


if __name__ == "__main__":
    main()
