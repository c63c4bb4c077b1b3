"""Cost of the sparsity-vs-depth metrics (spec studies.md A.3) on a 16-layer tiny Llama, and the
row-wise Jacobian vs a naive full Jacobian (`torch.autograd.functional.jacobian`).

    python packages/depth-probe/benchmarks/bench_depth_metrics.py [--threads 1] [--no-docs]

Model: the study's CPU-scale Llama (d=128, 4 heads, SwiGLU inner 352, vocab 4096, 16 blocks, fp32),
built from config, random init; inputs: 8 random windows x 64 tokens, micro-batches of 4.
- Per metric: model forwards (calls of the model, stopped ones included), backward passes (one per
  Jacobian row, per micro-batch and block) and vectorised backward calls, wall time (one run).
- Jacobian of one block on one 32-token window: row-wise (d backward passes, vectorised by 32) and
  row-wise looped (chunk 1) vs the naive full Jacobian (B·T·d rows, vectorised), medians of
  interleaved repeats; the results must agree.
Appends a section to docs/benchmarks.md unless --no-docs.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

import depth_probe as dp
from layerwise_core import llama_config
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table

ROOT = Path(__file__).resolve().parents[3]
LAYERS = 16


def build() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = llama_config(
        "llama-tiny",
        vocab_size=4096,
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=352,
        num_hidden_layers=LAYERS,
    )
    return LlamaForCausalLM(config).eval()


def counted(model, fn):
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        handle.remove()
    return result, len(calls), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build()
    ids = torch.randint(0, 4096, (8, 64), generator=torch.Generator().manual_seed(1))
    d = model.config.hidden_size
    bs = 4
    micro = math.ceil(ids.shape[0] / bs)
    chunk = 32
    metrics = {
        "layer_variance": lambda: dp.layer_variance(model, ids, batch_size=bs),
        "jacobian_distance (all d rows)": lambda: dp.jacobian_distance(
            model, ids, batch_size=bs, chunk=chunk
        ),
        "jacobian_distance (rows=16)": lambda: dp.jacobian_distance(
            model, ids, batch_size=bs, rows=16, chunk=chunk
        ),
        "usefulness": lambda: dp.usefulness(model, ids, batch_size=bs),
        "causal_scores": lambda: dp.causal_scores(model, ids, batch_size=bs),
        "permutation_scores (120 pairs)": lambda: dp.permutation_scores(model, ids, batch_size=bs),
        "attention_sparsity (t >= 32)": lambda: dp.attention_sparsity(
            model, ids, batch_size=bs, min_query=32
        ),
        "weight_sparsity": lambda: dp.weight_sparsity(model),
    }
    rows = []
    for name, fn in metrics.items():
        result, forwards, seconds = counted(model, fn)
        backward = getattr(result, "backward_passes", 0)
        calls = backward and LAYERS * micro * math.ceil(result.rows / chunk)
        rows.append([name, forwards, backward, calls, f"{seconds:.2f}"])
        print(rows[-1], flush=True)
    table = markdown_table(
        ["metric", "model forwards", "backward passes", "vectorised backward calls", "seconds"],
        rows,
    )

    window = ids[:1, :32]
    layer = LAYERS // 2
    rowwise = dp.block_jacobian(model, window, layer=layer, chunk=chunk)
    full = dp.full_block_jacobian(model, window, layer=layer)
    gap = float((rowwise - full).abs().max())
    times = interleaved_medians(
        {
            "row-wise, vectorised by 32": lambda: dp.block_jacobian(
                model, window, layer, chunk=chunk
            ),
            "row-wise, looped": lambda: dp.block_jacobian(model, window, layer=layer, chunk=1),
            "naive full Jacobian (vectorised)": lambda: dp.full_block_jacobian(
                model, window, layer=layer
            ),
        },
        repeats=args.repeats,
        warmup=1,
    )
    naive = times["naive full Jacobian (vectorised)"]
    jac_rows = [
        [name, f"{seconds:.3f}", f"{naive / seconds:.1f}x"] for name, seconds in times.items()
    ]
    jac_table = markdown_table(
        ["Jacobian of one block (1 x 32 tokens, d=128)", "median s", "speed-up vs naive"], jac_rows
    )
    print(jac_table)
    body = (
        f"{table}\n\n{jac_table}\n\nMax |row-wise − naive| = {gap:.1e}. Backward passes of the "
        f"row-wise Jacobian: d = {d} per block and micro-batch; naive: B·T·d = {32 * d}."
    )
    print(body)
    if not args.no_docs:
        append_section(
            ROOT / "docs" / "benchmarks.md",
            f"depth-probe: sparsity-vs-depth metrics on a {LAYERS}-layer tiny Llama",
            f"python packages/depth-probe/benchmarks/bench_depth_metrics.py --threads {args.threads}",
            body,
            notes=[
                f"Model: d=128, 4 heads, SwiGLU 352, vocab 4096, {LAYERS} blocks, fp32, random "
                f"init; 8 windows x 64 tokens, micro-batches of {bs}; one thread",
                "Machine shared with other jobs (load average ~6-8 on 2 cores): times are "
                "indicative, counts exact",
            ],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
