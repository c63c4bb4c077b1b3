"""sddmm benchmark: the k sampled entries of dy^T x (a sparse-delta weight gradient) vs forming the
dense [m, n] gradient and gathering; appends a section to docs/benchmarks.md.

    python kernels/benchmarks/bench_sddmm.py [--repeats 7]

CPU: fp32, our banded torch reference vs dense matmul + gather, wall-clock medians of interleaved
repeats in one process (ratios), and the largest single allocation (torch profiler). CUDA: bf16,
`triton.testing.do_bench` medians of our Triton kernel, the banded reference and dense + gather, and
`torch.cuda.max_memory_allocated` above the inputs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from layerwise_kernels.sddmm import sddmm

ROOT = Path(__file__).resolve().parents[2]
# (tokens, out_features m, in_features n, density of the sampled entries)
CPU_CASES = [(512, 2048, 768, 0.05), (512, 768, 2048, 0.05), (1024, 4096, 4096, 0.02)]
GPU_CASES = [(8192, 4096, 4096, 0.02), (8192, 11008, 4096, 0.02), (16384, 4096, 4096, 0.05)]


def _inputs(tokens, m, n, density, device, dtype):
    gen = torch.Generator().manual_seed(0)
    dy = torch.randn(tokens, m, generator=gen).to(device, dtype)
    x = torch.randn(tokens, n, generator=gen).to(device, dtype)
    k = int(density * m * n)
    flat = torch.randperm(m * n, generator=gen)[:k].sort().values.to(device)
    return dy, x, flat // n, flat % n


def _dense_gather(dy, x, rows, cols):
    return (dy.T.float() @ x.float())[rows, cols]


def _largest_allocation(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events()), default=0)


def bench_cpu(case, repeats: int) -> list[list[str]]:
    dy, x, rows, cols = _inputs(*case, "cpu", torch.float32)
    fns = {
        "ours (banded torch)": lambda: sddmm(dy.T, x, rows, cols, backend="torch"),
        "dense dy^T x + gather": lambda: _dense_gather(dy, x, rows, cols),
    }
    medians = interleaved_medians(fns, repeats=repeats)
    base = medians["dense dy^T x + gather"]
    return [
        [name, f"{medians[name] / base:.2f}×", f"{_largest_allocation(fn) / 2**20:.1f} MiB"]
        for name, fn in fns.items()
    ]


def bench_cuda(case) -> list[list[str]]:
    from triton.testing import do_bench

    dy, x, rows, cols = _inputs(*case, "cuda", torch.bfloat16)
    fns = {
        "ours (Triton)": lambda: sddmm(dy.T, x, rows, cols, backend="triton"),
        "ours (banded torch)": lambda: sddmm(dy.T, x, rows, cols, backend="torch"),
        "dense dy^T x + gather": lambda: _dense_gather(dy, x, rows, cols),
    }
    out = []
    for name, fn in fns.items():
        ms = do_bench(fn, return_mode="median")
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        out.append([name, f"{ms:.3f} ms", f"{peak:.1f} MiB"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    cuda = torch.cuda.is_available()
    parts = []
    for case in GPU_CASES if cuda else CPU_CASES:
        tokens, m, n, density = case
        rows = bench_cuda(case) if cuda else bench_cpu(case, args.repeats)
        header = ["Implementation", "Time", "Peak memory"]
        if not cuda:
            header = ["Implementation", "Time / dense", "Largest allocation"]
        parts.append(
            f"{tokens} tokens, dW of {m} x {n}, {density:.0%} of its entries "
            f"(dense gradient: {m * n * 4 / 2**20:.1f} MiB fp32):\n\n"
            + markdown_table(header, rows)
        )
    script = Path(__file__).resolve().relative_to(ROOT)
    text = append_section(
        args.output,
        "sddmm: sampled entries of dy^T x vs the dense gradient",
        shlex.join(["python", str(script), *sys.argv[1:]]),
        "\n\n".join(parts),
        notes=[
            "bf16 inputs, fp32 accumulation; do_bench medians; peak = max_memory_allocated above "
            "the inputs."
            if cuda
            else f"fp32; medians of {args.repeats} interleaved repeats in one process, as a ratio "
            "to dense + gather; largest single allocation from the torch profiler.",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()
