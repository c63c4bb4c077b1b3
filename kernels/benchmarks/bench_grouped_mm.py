"""grouped_mm benchmark: ours (Triton) vs torch's grouped GEMM vs the per-group loop reference.

    python kernels/benchmarks/bench_grouped_mm.py [--sizes 8192x1024x704x64,...] [--repeats 7]

A size is ROWSxINxOUTxGROUPS: ROWS token copies sorted into GROUPS experts with uneven counts
(some empty), weight [GROUPS, IN, OUT] given as the transpose of an nn.Linear-style parameter.
Forward+backward (dx and dweight) is timed. On CUDA: bf16 and fp32, `triton.testing.do_bench`
medians (ms); torch's grouped GEMM runs for bf16 only (what it supports on CUDA). On CPU: fp32,
ratios of wall-clock medians over interleaved repeats, the reference vs torch's grouped GEMM (the
Triton kernel only runs in the interpreter there, which is not a performance path).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from layerwise_kernels.grouped_mm import grouped_mm

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
GPU_SIZES = "8192x1024x1408x64,8192x1024x704x64,32768x2048x1408x64"
CPU_SIZES = "4096x256x256x64,2048x1024x704x64"


def _problem(rows: int, n_in: int, n_out: int, groups: int, device: str, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    # uneven groups: a few experts popular, some empty (as routing gives)
    counts = torch.bincount(
        torch.multinomial(torch.rand(groups, generator=gen) ** 3, rows, True, generator=gen),
        minlength=groups,
    )
    x = torch.randn(rows, n_in, generator=gen).to(device, dtype).requires_grad_()
    weight = torch.randn(groups, n_out, n_in, generator=gen) * n_in**-0.5
    weight = weight.to(device, dtype).requires_grad_()
    dy = torch.randn(rows, n_out, generator=gen).to(device, dtype)
    return x, weight, counts.cumsum(0).to(device), dy


def _implementations(x, weight, offsets, dy, device: str, dtype: torch.dtype) -> dict:
    native = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    fns = {
        "reference (loop over groups)": lambda: grouped_mm(x, weight.mT, offsets, backend="torch")
    }
    if device == "cuda":
        fns["ours (Triton)"] = lambda: grouped_mm(x, weight.mT, offsets, backend="triton")
    if native is not None and (device == "cpu" or dtype == torch.bfloat16):
        fns["torch grouped_mm"] = lambda: native(x, weight.mT, offs=offsets.to(torch.int32))

    def fwd_bwd(fn):
        def run() -> None:
            fn().backward(dy)
            x.grad = weight.grad = None

        return run

    return {name: fwd_bwd(fn) for name, fn in fns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="comma-separated ROWSxINxOUTxGROUPS")
    parser.add_argument("--repeats", type=int, default=7, help="CPU: repeats (>= 5) for medians")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=DOCS, help="markdown file to append to")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = args.sizes or (GPU_SIZES if device == "cuda" else CPU_SIZES)
    dtypes = [torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    rows = []
    for size in sizes.split(","):
        shape = tuple(int(v) for v in size.split("x"))
        for dtype in dtypes:
            x, weight, offsets, dy = _problem(*shape, device, dtype)
            fns = _implementations(x, weight, offsets, dy, device, dtype)
            label = f"{size} {str(dtype).removeprefix('torch.')}"
            if device == "cuda":
                from triton.testing import do_bench

                for name, fn in fns.items():
                    rows.append([label, name, f"{do_bench(fn, return_mode='median'):.3f} ms"])
            else:
                times = interleaved_medians(fns, repeats=args.repeats)
                base = times["reference (loop over groups)"]
                rows += [[label, name, f"{t / base:.2f}×"] for name, t in times.items()]
    column = "Fwd+bwd (median)" if device == "cuda" else "Fwd+bwd time vs reference"
    body = markdown_table(["Rows×in×out×groups dtype", "Implementation", column], rows)
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    notes = [
        "Uneven group sizes (some empty); weight passed as the transpose of [groups, out, in]."
    ]
    print(append_section(args.output, "grouped_mm", command, body, notes))


if __name__ == "__main__":
    main()
