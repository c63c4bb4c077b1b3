"""NeuroTrails training cost: step time and peak memory vs a dense single model, a dense 3-model
ensemble and a dense TreeNet, plus the mask-update time (issue 22).

    python packages/sparse-ft/benchmarks/bench_neurotrails.py [--repeats 5] [--batch 8] [--seq 128]

Model: the spec's CPU size (docs/neurotrails.md; spec §9): Llama d 128, f 352, 4 attention heads,
L 6, V 2048, untied lm_head, fp32, N(0, 0.02) init. Arms:
- single dense: one `LlamaForCausalLM`.
- ensemble 3× dense: `HeadsConfig(count=3, blocks_in_head="all")`, three full models.
- TreeNet dense: `HeadsConfig(count=3, blocks_in_head=4)`: 2 shared blocks, 3 heads of 4 blocks.
- NeuroTrails d 0.9 / d 0.45: the TreeNet + `DynamicSparsity(DSTConfig(density=d))` (ERK, soft
  magnitude prune T 3, gradient regrow, update every 50 steps).

Step: forward, backward (sum of the heads' CE), Adam step, `DynamicSparsity.step` (W *= M; no
topology update inside the timed steps), zero_grad. Step time: one torch thread, CPU time of the
thread (`time.thread_time`: the box is shared), medians of interleaved repeats of every arm in
one process, as ratios to the single model. Mask update: `DynamicSparsity.update` (prune + regrow
of every masked tensor, then W *= M) on the gradients of one step, medians of repeats; per step
at ΔT = 50 it costs update / 50. Peak memory: peak RSS (VmHWM) of a fresh process per arm, reset
after the model, the masks and the optimizer are built and one warm-up step has allocated Adam's
state, read after two more steps; "training overhead" is that peak minus the RSS once built.
Dense masked matmuls: no sparse kernels on CPU, so sparsity saves no time or memory here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from layerwise_core import init_normal_, llama_config, set_seed
from layerwise_core.benchmarking import append_section, markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_elas_memory import cpu_time_medians
from bench_memory import _rss_kib

ROOT = Path(__file__).resolve().parents[3]
ARMS = (
    "single dense",
    "ensemble 3× dense",
    "TreeNet dense",
    "NeuroTrails d 0.9",
    "NeuroTrails d 0.45",
)
DENSITY = {"NeuroTrails d 0.9": 0.9, "NeuroTrails d 0.45": 0.45}
SIZE = dict(
    vocab_size=2048,
    hidden_size=128,
    intermediate_size=352,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=4,
)
K, B = 3, 4
TOTAL_STEPS = 1500  # spec §9's run length: the cosine schedule's T


def build(arm: str):
    """(model, optimizer, DynamicSparsity or None) for one arm, seeded alike."""
    from transformers import LlamaForCausalLM

    from sparse_ft.dst import DSTConfig, DynamicSparsity
    from sparse_ft.multi_head import HeadsConfig

    set_seed(0)
    config = llama_config("llama-tiny", **SIZE)
    if arm == "single dense":
        model = LlamaForCausalLM(config)
    elif arm == "ensemble 3× dense":
        model = HeadsConfig(count=K, blocks_in_head="all").build(config)
    else:
        model = HeadsConfig(count=K, blocks_in_head=B).build(config)
    init_normal_(model)
    model.train()
    dst = None
    if arm in DENSITY:
        dst = DynamicSparsity(
            model, DSTConfig(density=DENSITY[arm], update_every=50), total_steps=TOTAL_STEPS
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, optimizer, dst


def counts(model, dst) -> tuple[int, int]:
    """(parameters, nonzero parameters: masked tensors count their active entries)."""
    total = sum(p.numel() for p in model.parameters())
    if dst is None:
        return total, total
    masked = sum(m.numel() for m in dst.masks.values())
    return total, total - masked + sum(int(m.sum()) for m in dst.masks.values())


def train_step(model, optimizer, dst, ids) -> None:
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    if dst is not None:
        dst.step(optimizer)
    optimizer.zero_grad(set_to_none=True)


def child(arm: str, batch: int, seq: int) -> None:
    """Fresh process: print {"peak_mib", "overhead_mib"} of one arm as JSON."""
    torch.set_num_threads(1)
    ids = torch.randint(
        0, SIZE["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0)
    )
    model, optimizer, dst = build(arm)
    loaded = _rss_kib("VmRSS")
    train_step(model, optimizer, dst, ids)  # allocates Adam's state
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: imports and construction do not count
    for _ in range(2):
        train_step(model, optimizer, dst, ids)
    peak = _rss_kib("VmHWM")
    print(json.dumps({"peak_mib": peak / 1024, "overhead_mib": (peak - loaded) / 1024}))


def update_times(built, ids, repeats: int) -> dict[str, float]:
    """Median CPU seconds of one `DynamicSparsity.update` (all masked tensors) per sparse arm."""
    out = {}
    for arm, (model, optimizer, dst) in built.items():
        if dst is None:
            continue
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        dst.update(optimizer)  # warm-up
        samples = []
        for _ in range(repeats):
            start = time.thread_time()
            dst.update(optimizer)
            samples.append(time.thread_time() - start)
        optimizer.zero_grad(set_to_none=True)
        out[arm] = statistics.median(samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch, args.seq)
        return
    torch.set_num_threads(1)

    peaks = {}
    for arm in ARMS:
        cmd = [sys.executable, __file__, "--child", arm, "--batch", str(args.batch)]
        proc = subprocess.run([*cmd, "--seq", str(args.seq)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{arm}: child failed\n{proc.stderr[-3000:]}")
        peaks[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(arm, peaks[arm], file=sys.stderr)

    ids = torch.randint(
        0, SIZE["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    built = {arm: build(arm) for arm in ARMS}
    sizes = {arm: counts(model, dst) for arm, (model, _, dst) in built.items()}
    medians = cpu_time_medians(
        {arm: (lambda b=b: train_step(*b, ids)) for arm, b in built.items()}, args.repeats
    )
    updates = update_times(built, ids, args.repeats)
    print(medians, updates, file=sys.stderr)

    base_time, base_peak = medians["single dense"], peaks["single dense"]["peak_mib"]
    rows = []
    for arm in ARMS:
        total, nonzero = sizes[arm]
        update = updates.get(arm)
        rows.append(
            [
                arm,
                f"{total / 1e6:.2f}M",
                f"{nonzero / 1e6:.2f}M",
                f"{medians[arm] * 1e3:.0f} ms",
                f"{medians[arm] / base_time:.2f}×",
                f"{peaks[arm]['peak_mib']:.0f} MiB",
                f"{peaks[arm]['peak_mib'] / base_peak:.2f}×",
                f"{peaks[arm]['overhead_mib']:.0f} MiB",
                "" if update is None else f"{update * 1e3:.0f} ms ({update / 50 * 1e3:.1f} ms)",
            ]
        )
    table = markdown_table(
        [
            "Arm",
            "Params",
            "Nonzero",
            "Step (CPU time)",
            "Step / single",
            "Peak RSS",
            "Peak / single",
            "Training overhead",
            "Mask update (per step at ΔT 50)",
        ],
        rows,
    )
    script = Path(__file__).resolve().relative_to(ROOT)
    command = shlex.join(["python", str(script), *sys.argv[1:]])
    notes = [
        f"Model: spec §9 CPU size (Llama d 128, f 352, 4 heads, L 6, V 2048, untied), fp32, batch "
        f"{args.batch} × {args.seq} tokens; heads K {K}, b {B} (2 shared blocks); NeuroTrails: "
        "ERK, soft magnitude prune (T 3), gradient regrow, ΔT 50, T 1500.",
        f"Step: forward + backward (sum of head CEs) + Adam + `DynamicSparsity.step` (W *= M, no "
        f"topology update in the timed steps); one torch thread, CPU time of the thread, medians "
        f"of {args.repeats} interleaved repeats in one process; ratios to the single model.",
        "Mask update: one `DynamicSparsity.update` (soft prune + gradient regrow of every masked "
        f"tensor, then W *= M), median of {args.repeats}; in brackets amortised over ΔT = 50 steps.",
        "Peak RSS: VmHWM of a fresh process per arm, reset after construction and one warm-up "
        "step, over two more steps; training overhead = peak minus the RSS once built.",
        "Masks are dense bool tensors and matmuls dense (no sparse kernels on CPU): sparsity saves "
        "neither time nor memory here; the masks add 1 byte per masked weight.",
    ]
    text = append_section(
        args.output,
        "sparse-ft: NeuroTrails vs single / ensemble / TreeNet, step time and peak memory",
        command,
        table,
        notes=notes,
    )
    print(text)


if __name__ == "__main__":
    main()
