"""NAP at toy scale: does training on independent trajectories make forced parallel decoding hurt
less? Two tiny masked diffusion LMs, one fine-tuned on NAP-structured data (several independent
derivations of a + b, each in its own tagged segment, then a summary) and one on the same content
as a single chain (the Long-CoT control), decoded with parallel-forced decoding at 1, 2, 4, 8
tokens per step.

    python examples/nap_arithmetic.py                       # ~12 CPU minutes (1 thread, 1 seed)
    python examples/nap_arithmetic.py --smoke               # seconds: the same code, toy budget
    python examples/nap_arithmetic.py --report FILE         # + append a markdown section to FILE

Claim (Li et al., arXiv:2602.23225, NAP): diffusion LMs trained on sequential (Long-CoT) data
lose accuracy fast when forced to commit k tokens per step; SFT on independent parallel
trajectories (`<think 1>R1</think 1> ... <summary>S</summary>`) with segment-wise forced decoding
degrades less as k grows.

Data (`layerwise.finetune.nap_data.arithmetic_nap_records`, character tokens plus NAP's tags as
single tokens, as NAP adds them to its tokenizer):

    prompt     "47+85?"
    NAP        "<think 1>85+40=125, 125+7=132         </think 1>\\n<think 2>7+5=12, 40+80=120,
                12+120=132</think 2>\\n<summary>47+85=132</summary>"   (trajectories padded to
                one width, so trajectory j fills the same span in every target)
    Long-CoT   "85+40=125, 125+7=132\\n7+5=12, 40+80=120, 12+120=132\\n47+85=132$$$..."  (the same
                trajectories and summary in one chain, EOS-padded to the same length)

Both arms: the same model initialisation, optimiser, steps, batch and the same problems and
trajectories in the same order (one seed drives both); the loss is `layerwise.train.mdm`'s
masked-diffusion SFT loss (prompt never masked). Decoding: `ParallelForced(tokens_per_step=k)`,
T = 0, over the whole region; the NAP model with segments = its trajectory blocks and the summary
(and, as an ablation, with one segment). Accuracy = the decoded summary is exactly "a+b=sum".
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from dlm_decode import ParallelForced, generate
from layerwise.finetune.nap_data import (
    arithmetic_nap_records,
    arithmetic_trajectories,
    parse_nap_target,
    structure_tokens,
)
from layerwise.train.mdm import masked_diffusion_loss
from layerwise_core import set_seed
from layerwise_core.tiny_models import tiny_bidirectional

ROOT = Path(__file__).resolve().parents[1]
SEPARATOR, FILLER, EOS = "\n", " ", "$"
WIDTH = max(len(t) for a in range(100) for b in range(100) for t in arithmetic_trajectories(a, b))
PROMPT_LEN = 6  # "47+85?"
TOKENS_PER_STEP = (1, 2, 4, 8)


class Vocabulary:
    """Characters of the task plus NAP's structure tags (single tokens), then [MASK]."""

    def __init__(self, trajectories: int) -> None:
        self.tags = structure_tokens(trajectories)
        self.symbols = [*"0123456789+=?,", FILLER, SEPARATOR, EOS, *self.tags]
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.mask = len(self.symbols)
        self.size = self.mask + 1
        tags = "|".join(re.escape(t) for t in sorted(self.tags, key=len, reverse=True))
        self._pattern = re.compile(f"{tags}|.", re.DOTALL)

    def encode(self, text: str) -> list[int]:
        return [self.index[s] for s in self._pattern.findall(text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.symbols[i] if i < self.mask else "?" for i in ids)


def gen_length(trajectories: int) -> int:
    """Tokens of the NAP target: m blocks of tag + WIDTH + tag, the summary block, separators."""
    return trajectories * (WIDTH + 2) + (2 + 9) + trajectories * len(SEPARATOR)


def nap_segments(trajectories: int) -> tuple[int, ...]:
    """Decoding segments of the NAP canvas: each think block with its separator, the summary."""
    return (*[WIDTH + 2 + len(SEPARATOR)] * trajectories, 2 + 9)


def targets(pairs, trajectories: int, seed: int, layout: str, vocab: Vocabulary) -> torch.Tensor:
    """(N, PROMPT_LEN + G) token rows of prompt + target (Long-CoT: EOS-padded to G)."""
    options = {"width": WIDTH, "filler": FILLER} if layout == "nap" else {}
    records = arithmetic_nap_records(
        pairs, trajectories, seed, layout=layout, separator=SEPARATOR, **options
    )
    length = gen_length(trajectories)
    rows = []
    for record in records:
        target = vocab.encode(record["answer"])
        if len(target) > length:
            raise ValueError(f"target longer than the canvas ({len(target)} > {length})")
        target += [vocab.index[EOS]] * (length - len(target))
        rows.append(vocab.encode(record["instruction"]) + target)
    return torch.tensor(rows)


def summary_of(text: str, layout: str) -> str | None:
    """The decoded summary: NAP's <summary> block, or the Long-CoT chain's last line."""
    if layout == "nap":
        return parse_nap_target(text, filler=FILLER)[1]
    return text.split(EOS)[0].split(SEPARATOR)[-1]


def usable(a: int, b: int, trajectories: int) -> bool:
    """Whether a + b has `trajectories` distinct derivations (0 + 0 has two, a + a three), so
    that its NAP canvas has every block; other pairs are left out of both arms."""
    return len(arithmetic_trajectories(a, b)) >= trajectories


def split(test_size: int, seed: int, top: int, trajectories: int) -> list[tuple[int, int]]:
    """Held-out test pairs among the usable a, b < top; training draws any other usable pair."""
    pairs = [(a, b) for a in range(top) for b in range(top) if usable(a, b, trajectories)]
    random.Random(seed).shuffle(pairs)
    return sorted(pairs[:test_size])


def train(layout, args, seed, vocab, held_out):
    """One arm: the same initialisation, problems, trajectories and noise for either layout."""
    set_seed(seed)
    model = tiny_bidirectional(
        seed=seed,
        mask_token_id=vocab.mask,
        vocab_size=vocab.size,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=PROMPT_LEN + gen_length(args.trajectories),
    )
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed + 1)
    held_out = set(held_out)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98)
    )
    steps, warmup = args.train_steps, max(1, args.train_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        ),
    )
    prompt_lengths = torch.full((args.batch,), PROMPT_LEN)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        pairs = []
        while len(pairs) < args.batch:
            pair = (rng.randrange(args.max_operand), rng.randrange(args.max_operand))
            if pair not in held_out and usable(*pair, args.trajectories):
                pairs.append(pair)
        batch = targets(pairs, args.trajectories, seed * 100_003 + step, layout, vocab)
        loss = masked_diffusion_loss(
            model, batch, vocab.mask, prompt_lengths=prompt_lengths, generator=gen
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == steps:
            recent = losses[-args.log_every :]
            print(
                f"[{layout} seed {seed}] step {step}/{steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
    return model.eval(), time.perf_counter() - t0, losses


def evaluate(model, layout, segments, args, vocab, test_pairs) -> dict:
    """Accuracy of the decoded summary at every tokens-per-step setting."""
    prompts = torch.tensor([vocab.encode(f"{a:02d}+{b:02d}?") for a, b in test_pairs])
    truth = [f"{a:02d}+{b:02d}={a + b:03d}" for a, b in test_pairs]
    length = gen_length(args.trajectories)
    results = {}
    for k in TOKENS_PER_STEP:
        strategy = ParallelForced(tokens_per_step=k, segments=segments)
        out = generate(model, prompts, strategy, gen_length=length)
        texts = [vocab.decode(row) for row in out.generated.tolist()]
        correct = [summary_of(text, layout) == want for text, want in zip(texts, truth)]
        results[k] = {
            "accuracy": sum(correct) / len(correct),
            "nfe": out.stats.nfe.double().mean().item(),
            "wall_s": out.stats.wall_s,
            "example": texts[0],
        }
        print(
            f"  {layout} segments={segments} k={k}: {results[k]['accuracy']:.3f}", file=sys.stderr
        )
    return results


def run(args) -> dict:
    vocab = Vocabulary(args.trajectories)
    test_pairs = split(args.test_size, 12345, args.max_operand, args.trajectories)
    out: dict = {"gen_length": gen_length(args.trajectories), "seeds": {}}
    for seed in args.seeds:
        per_seed = {}
        for layout in ("nap", "long_cot"):
            model, train_s, losses = train(layout, args, seed, vocab, test_pairs)
            arms = {f"{layout}, 1 segment": 1}
            if layout == "nap":
                arms = {"nap, trajectory segments": nap_segments(args.trajectories), **arms}
            for name, segments in arms.items():
                t0 = time.perf_counter()
                per_seed[name] = {
                    "train_s": train_s,
                    "final_loss": sum(losses[-50:]) / len(losses[-50:]),
                    "results": evaluate(model, layout, segments, args, vocab, test_pairs),
                    "eval_s": time.perf_counter() - t0,
                }
        out["seeds"][seed] = per_seed
    return out


def summarise(out: dict) -> dict:
    """Per arm and k: mean and sd of accuracy over seeds, and the NFE."""
    table: dict = {}
    for per_seed in out["seeds"].values():
        for name, arm in per_seed.items():
            for k, r in arm["results"].items():
                entry = table.setdefault(name, {}).setdefault(k, {"acc": [], "nfe": r["nfe"]})
                entry["acc"].append(r["accuracy"])
    for arms in table.values():
        for entry in arms.values():
            accs = entry["acc"]
            mean = sum(accs) / len(accs)
            sd = (sum((a - mean) ** 2 for a in accs) / max(1, len(accs) - 1)) ** 0.5
            entry.update(mean=mean, sd=sd)
    return table


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, arms in table.items():
        ks = sorted(arms)
        ax.errorbar(ks, [100 * arms[k]["mean"] for k in ks], [100 * arms[k]["sd"] for k in ks],
                    marker="o", capsize=3, label=name)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(TOKENS_PER_STEP), [str(k) for k in TOKENS_PER_STEP])
    ax.set_xlabel("tokens committed per step (parallel-forced)")
    ax.set_ylabel("answer accuracy (%)")
    ax.set_title("NAP vs Long-CoT SFT, tiny DLM on 2-digit additions", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def report(args, out: dict, table: dict, path: Path) -> None:
    from layerwise_core.benchmarking import append_section, markdown_table

    seeds = list(out["seeds"])
    cell = "{:.1f}% ± {:.1f}" if len(seeds) > 1 else "{:.1f}%"
    header = ["SFT data / decoding", *[f"k = {k} (NFE {table['nap, 1 segment'][k]['nfe']:.0f})"
                                       for k in TOKENS_PER_STEP]]  # fmt: skip
    rows = [
        [name, *[cell.format(100 * arms[k]["mean"], 100 * arms[k]["sd"]) for k in sorted(arms)]]
        for name, arms in table.items()
    ]
    first = out["seeds"][seeds[0]]
    # one model per layout: its "1 segment" arm carries its training time once
    train_min = (
        sum(
            a["train_s"]
            for s in out["seeds"].values()
            for n, a in s.items()
            if n.endswith("1 segment")
        )
        / 60
    )
    body = "\n".join(
        [
            "**Claim** (NAP, arXiv:2602.23225): forcing k tokens per step hurts models trained on "
            "sequential Long-CoT data; SFT on independent parallel trajectories plus segment-wise "
            "forced decoding degrades less as k grows.",
            "",
            f"**Setup**: tiny bidirectional Llama (hidden {args.hidden}, {args.layers} layers), "
            f"masked-diffusion SFT (`layerwise.train.mdm`, prompt never masked), {args.train_steps} "
            f"steps of {args.batch} problems a+b with a, b < {args.max_operand}, AdamW lr {args.lr}, warm-up + cosine; the same "
            f"initialisation, problems, trajectories and noise seed in both arms; seeds {seeds}. "
            f"Data: `arithmetic_nap_records` with {args.trajectories} independent derivations per "
            f"problem (trajectories padded to width {WIDTH} in the NAP layout; the Long-CoT "
            "control holds the same trajectories and summary as one chain, EOS-padded); canvas "
            f"{out['gen_length']} tokens. Test: {args.test_size} held-out pairs; accuracy = the "
            "decoded summary equals `a+b=sum`. Decoding `ParallelForced(tokens_per_step=k)`, "
            f"T = 0; NAP segments = {list(nap_segments(args.trajectories))} (think blocks, "
            "summary). Mean ± sd over seeds. Final training loss (seed "
            f"{seeds[0]}): NAP {first['nap, trajectory segments']['final_loss']:.3f}, Long-CoT "
            f"{first['long_cot, 1 segment']['final_loss']:.3f} (not comparable: the NAP canvas holds "
            f"more predictable tags and filler); training {train_min:.1f} wall min in all (1 "
            "thread, shared machine).",
            "",
            markdown_table(header, rows),
            "",
            f"![NAP vs Long-CoT accuracy vs tokens per step](figures/{args.figure.name})",
        ]
    )
    command = shlex.join(["python", "examples/nap_arithmetic.py", *sys.argv[1:]])
    if not path.exists():
        path.write_text("# Reproductions\n\n")
    append_section(path, "dlm-decode: NAP vs Long-CoT SFT on a tiny DLM", command, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--trajectories", type=int, default=2, help="derivations per problem")
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument(
        "--max-operand", type=int, default=50, help="a, b < this (at most 100): a smaller task"
    )
    parser.add_argument("--seeds", default="0", help="comma list of training seeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="toy budget: checks that it runs")
    parser.add_argument("--report", type=Path, default=None, help="append a section to this file")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "nap_arithmetic")
    parser.add_argument(
        "--figure", type=Path, default=ROOT / "docs" / "figures" / "nap_arithmetic.png"
    )
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.smoke:
        args.train_steps, args.test_size, args.batch, args.log_every = 6, 8, 8, 3
        args.hidden, args.layers = 32, 1
    torch.set_num_threads(args.threads)
    out = run(args)
    table = summarise(out)
    out["summary"] = {name: {str(k): v for k, v in arms.items()} for name, arms in table.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(out, indent=2, default=str))
    if args.report is not None:
        plot(table, args.figure)
        report(args, out, table, args.report)
    for name, arms in table.items():
        print(name, {k: round(v["mean"], 3) for k, v in arms.items()})


if __name__ == "__main__":
    main()
