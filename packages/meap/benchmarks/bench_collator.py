"""MEAPCollator overhead per batch vs one training step of a 9M-parameter Llama on CPU (target < 1%).

    python packages/meap/benchmarks/bench_collator.py [--repeats 7] [--threads N]

(`--threads 1` on a shared 2-core machine: two threads there spend most of their time waiting.)

Times, in one process and interleaved: the full training step (forward, backward, AdamW) on a
batch of 8 x 256 tokens; the plain padding collation of the same batch (what any causal-LM
collator does); and MEAPCollator in reference and per-sequence mode, on packed blocks and on
padded rows of mixed lengths. The overhead is (MEAPCollator time) / (training step time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from layerwise_core import init_normal_, llama_config
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from meap import MEAPCollator, pad_batch

ROOT = Path(__file__).resolve().parents[3]
VOCAB, BATCH, SEQ = 8192, 8, 256
INNER = 20  # collations per timed sample (each takes ~1 ms: time a loop against noise)


def training_step():
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        llama_config(
            "llama-tiny",
            vocab_size=VOCAB,
            hidden_size=256,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=688,
        )
    )
    init_normal_(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = MEAPCollator(VOCAB - 1)(torch.randint(0, VOCAB - 1, (BATCH, SEQ + 1)))

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    params = sum(p.numel() for p in model.parameters())
    return step, params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    step, params = training_step()
    gen = torch.Generator().manual_seed(0)
    packed = torch.randint(0, VOCAB - 1, (BATCH, SEQ + 1), generator=gen)
    lengths = torch.randint(SEQ // 2, SEQ + 2, (BATCH,), generator=gen).tolist()
    padded = [{"input_ids": packed[b, :n].tolist()} for b, n in enumerate(lengths)]
    collators = {
        "reference": MEAPCollator(VOCAB - 1, 0.15, "reference", pad_token_id=0),
        "per_sequence": MEAPCollator(VOCAB - 1, 0.15, "per_sequence", pad_token_id=0),
    }

    def looped(fn):
        def run():
            for _ in range(INNER):
                fn()

        return run

    fns = {
        "training step": step,
        "pad only, packed": looped(lambda: pad_batch([{"input_ids": r} for r in packed], 0)),
        "pad only, padded": looped(lambda: pad_batch(padded, 0)),
    }
    for mode, collator in collators.items():
        fns[f"MEAPCollator {mode}, packed"] = looped(lambda c=collator: c(packed))
        fns[f"MEAPCollator {mode}, padded"] = looped(lambda c=collator: c(padded))
    times = interleaved_medians(fns, repeats=args.repeats, warmup=2)
    times = {name: t if name == "training step" else t / INNER for name, t in times.items()}
    base = times["training step"]
    rows = [
        [name, f"{100 * t / base:.3f}%"] for name, t in times.items() if name != "training step"
    ]
    body = markdown_table(["Per batch", "Time / training step"], rows)
    worst = max(t for name, t in times.items() if name.startswith("MEAPCollator")) / base
    text = append_section(
        args.out,
        "meap: MEAPCollator overhead per batch vs a 9M-model training step",
        " ".join(["python packages/meap/benchmarks/bench_collator.py", *sys.argv[1:]]),
        body,
        [
            f"Llama hidden 256, 6 layers, ffn 688, vocab {VOCAB} ({params / 1e6:.1f}M parameters), "
            f"batch {BATCH} x {SEQ + 1} tokens (packed) or {min(lengths)}..{max(lengths)} tokens "
            f"(padded), fp32, forward+backward+AdamW; mask ratio 0.15; medians of {args.repeats} "
            f"interleaved repeats after 2 warm-ups (collators: loops of {INNER} calls), one "
            f"process; training step {base * 1e3:.0f} ms. Target: < 1%; measured worst case "
            f"{100 * worst:.3f}%. `pad only` is the plain padding/labelling every causal-LM "
            "collator does; the masking itself is the difference.",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()
