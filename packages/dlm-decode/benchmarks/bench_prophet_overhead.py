"""Per-step overhead of Prophet's early-commit check vs LLaDA's sampler; appends to docs/benchmarks.md.

    python packages/dlm-decode/benchmarks/bench_prophet_overhead.py [--vocab 126464] [--repeats 7]

The network is replaced by one that returns precomputed logits (batch 1, prompt 16 + generation 64,
LLaDA's vocabulary), so each timed step is the sampler's own work: confidence, selection, commit,
and for Prophet the gap check. This is the worst case for the check: with a real model the forward
pass dominates. Prophet's thresholds are set to infinity so every arm runs the same 16 steps.
Two implementations of each: ours (the fused top-2 op gives the confidences and, for free, the gap)
and `reference_quirks=True` (softmax + gather like LLaDA, topk over the answer region like
Prophet). CPU: ratios of wall-clock medians of interleaved repeats, one process.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from dlm_decode import LLaDA, Prophet, StagedThresholds, generate
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "benchmarks.md"
PROMPT, GEN, BLOCK, STEPS = 16, 64, 32, 16


class PrecomputedLogits(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.logits = torch.randn(1, PROMPT + GEN, vocab, generator=gen) * 3
        self._anchor = nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(mask_token_id=vocab - 1, logit_shift=0, model_type="bench")

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=126464)
    parser.add_argument("--repeats", type=int, default=7, help="repeats (>= 5) for medians")
    parser.add_argument("--output", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    model = PrecomputedLogits(args.vocab)
    prompt = torch.randint(0, 100, (1, PROMPT))
    never = StagedThresholds(math.inf, math.inf, math.inf)
    arms = {}
    for quirks in (False, True):
        label = "reference_quirks=True" if quirks else "ours"
        arms[f"LLaDA ({label})"] = LLaDA(STEPS, BLOCK, reference_quirks=quirks)
        arms[f"Prophet, answer region ({label})"] = Prophet(
            STEPS, BLOCK, reference_quirks=quirks, thresholds=never, answer_start=40
        )
    arms["Prophet, block region (ours)"] = Prophet(STEPS, BLOCK, thresholds=never, region="block")

    def run(strategy):
        out = generate(model, prompt, strategy, gen_length=GEN)
        assert int(out.stats.nfe[0]) == STEPS

    medians = interleaved_medians({n: (lambda s=s: run(s)) for n, s in arms.items()}, args.repeats)
    rows = []
    for name, seconds in medians.items():
        base = "LLaDA (reference_quirks=True)" if "reference_quirks" in name else "LLaDA (ours)"
        rows.append(
            [name, f"{seconds / medians[base]:.3f}×", f"{seconds / medians['LLaDA (ours)']:.2f}×"]
        )
    body = markdown_table(
        ["Sampler", "Step time vs LLaDA, same implementation", "vs LLaDA (ours)"], rows
    )
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    text = append_section(
        args.output,
        f"Prophet early-commit check: per-step overhead (vocabulary {args.vocab})",
        command,
        body,
        notes=[
            f"Precomputed logits (1 × {PROMPT + GEN} × {args.vocab}, fp32): sampler work only; "
            f"{STEPS} steps, blocks of {BLOCK}, thresholds = inf so no arm exits early.",
            f"Medians of {args.repeats} interleaved repeats of a whole generate() call after warm-up; "
            "the same step count in every arm, so the ratio is the per-step ratio.",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()
