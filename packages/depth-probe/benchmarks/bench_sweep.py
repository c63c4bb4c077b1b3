"""Single-layer removal sweep: depth-probe (`skip_layers`, no copy) vs a naive deepcopy per layer.

    python packages/depth-probe/benchmarks/bench_sweep.py [--threads 1] [--no-docs]

Model: a 12-layer Llama (hidden 512, ffn 1376, vocab 8192, 46.3M parameters, fp32), built from
config. Scorer: perplexity of 2 x 128 random tokens. Both arms score the same 12 candidates and
must return the same numbers.

- Peak memory: peak RSS (VmHWM, reset through /proc/self/clear_refs after the model is built and
  one warm-up sweep candidate ran) of a fresh process per arm, above the RSS at the reset.
- Time: medians of 5 interleaved repeats after 1 warm-up, both arms in one process; ratio only.
- Also: all single-pass metrics of `probe()` vs one plain forward of the same batch (one forward).
Appends a section to docs/benchmarks.md unless --no-docs.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import torch

import depth_probe as dp
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table

ROOT = Path(__file__).resolve().parents[3]
CONFIG = dict(
    vocab_size=8192,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    ids = torch.randint(
        0, CONFIG["vocab_size"], (2, 128), generator=torch.Generator().manual_seed(1)
    )
    return model, dp.PerplexityScorer(ids, batch_size=2), ids


def ours(model, scorer) -> list[float]:
    return dp.single_layer_sweep(model, [scorer]).scores["perplexity"]


def naive(model, scorer) -> list[float]:
    scores = []
    for layer in range(len(model.model.layers)):
        pruned = dp.remove_layers(copy.deepcopy(model), [layer])
        scores.append(scorer(pruned))
        del pruned
    return scores


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_arm(arm: str) -> dict:
    """Run in a fresh process: peak RSS of one sweep above the RSS after setup."""
    model, scorer, _ = build()
    with torch.no_grad(), dp.skip_layers(model, [0]):
        scorer(model)  # warm-up: allocator pools and lazy init do not count
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM
    base = _rss_kib("VmRSS")
    scores = (ours if arm == "ours" else naive)(model, scorer)
    return {"peak_mib": (_rss_kib("VmHWM") - base) / 1024, "scores": scores}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.arm:
        print(json.dumps(measure_arm(args.arm)))
        return 0

    memory = {}
    for arm in ("ours", "naive"):
        cmd = [sys.executable, __file__, "--arm", arm]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        memory[arm] = json.loads(out.strip().splitlines()[-1])
    same = torch.allclose(
        torch.tensor(memory["ours"]["scores"]), torch.tensor(memory["naive"]["scores"]), rtol=1e-6
    )

    model, scorer, ids = build()
    params = sum(p.numel() for p in model.parameters())
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    with torch.no_grad():
        times = interleaved_medians(
            {"ours": lambda: ours(model, scorer), "naive": lambda: naive(model, scorer)},
            repeats=args.repeats,
            warmup=1,
        )
        forwards = []
        handle = model.register_forward_pre_hook(lambda m, a: forwards.append(1))
        dp.probe(model, ids)
        handle.remove()
        probe_times = interleaved_medians(
            {"probe": lambda: dp.probe(model, ids), "forward": lambda: model(ids)},
            repeats=args.repeats,
            warmup=1,
        )

    rows = [
        [
            "depth-probe `single_layer_sweep` (skip_layers)",
            f"{memory['ours']['peak_mib']:.0f} MiB",
            f"{times['ours'] / times['naive']:.2f}x",
        ],
        [
            "naive: `copy.deepcopy` + remove per layer",
            f"{memory['naive']['peak_mib']:.0f} MiB",
            "1.00x",
        ],
    ]
    body = markdown_table(["12 single-layer candidates", "Peak RSS above setup", "Time"], rows)
    body += "\n\n" + markdown_table(
        ["All single-pass metrics (`probe`)", "Forwards", "Time vs one plain forward"],
        [
            [
                "probe(model, 2 x 128 tokens)",
                str(len(forwards)),
                f"{probe_times['probe'] / probe_times['forward']:.2f}x",
            ]
        ],
    )
    notes = [
        f"Llama 12 layers, hidden 512, ffn 1376, vocab 8192 ({params / 1e6:.1f}M parameters, "
        f"{model_mib:.0f} MiB fp32); scorer: perplexity of 2 x 128 tokens; both arms return the "
        f"same 12 perplexities: {same}.",
        "Peak RSS: VmHWM of a fresh process per arm, reset after setup and one warm-up candidate. "
        f"Time: medians of {args.repeats} interleaved repeats after 1 warm-up, one process; ratio "
        "< 1: ours is faster.",
        "probe: block influence, angular distance, residual contributions, output variance, logit "
        "lens, CKA, 3 similarity variants (+ zeroed outlier channel), massive activations.",
    ]
    command = "python packages/depth-probe/benchmarks/bench_sweep.py" + (
        f" --threads {args.threads}" if args.threads else ""
    )
    text = body + "\n"
    print("\n".join(notes) + "\n\n" + text)
    if not args.no_docs:
        append_section(
            ROOT / "docs" / "benchmarks.md",
            "depth-probe: single-layer removal sweep without copying the model",
            command,
            text,
            notes,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
