"""GPTQ time per matrix: `sparse_ft.gptq_quantize` (lazy batches of B = 128 columns) vs the naive
column-by-column algorithm (after every column a rank-1 update of all the columns to its right).

    python packages/sparse-ft/benchmarks/bench_gptq.py [--size 2048] [--repeats 5] [--threads 1]

Both quantise the same fp32 [size, size] matrix to 4 bits with dynamic groups of 128 on the same
Hessian H = 2 X^T X / n (X: 2 size random tokens with correlated features); medians of interleaved
repeats after one warm-up, one process, so the ratio is measured in one run. The issue's target:
ours >= 5x faster at 2048 x 2048 on CPU. A row is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from sparse_ft import fit_grid, gptq_quantize, grid_quantize

ROOT = Path(__file__).resolve().parents[3]


def naive_gptq(weight, hessian, bits, group_size, percdamp=0.01):
    """The per-column loop of the paper, no lazy batches (same grid, same damping, no dead inputs)."""
    w = weight.clone()
    cols = w.shape[1]
    h = hessian.clone()
    h.diagonal().add_(percdamp * torch.diag(h).mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    grid = None
    for j in range(cols):
        if j % group_size == 0:
            grid = fit_grid(w[:, j : j + group_size], bits)
        q[:, j : j + 1] = grid_quantize(w[:, j : j + 1], grid)
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j:] -= torch.outer(err, u[j, j:])
    return q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print, do not append to the docs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    n = args.size
    mixing = torch.randn(n, n, generator=gen) / n**0.5 + torch.eye(n)
    x = torch.randn(2 * n, n, generator=gen) @ mixing
    hessian = 2 * x.T @ x / x.shape[0]
    weight = torch.randn(n, n, generator=gen) * 0.02

    def ours():
        return gptq_quantize(weight, hessian, args.bits, group_size=args.group_size)[0]

    def naive():
        return naive_gptq(weight, hessian, args.bits, args.group_size)

    q_ours, packed = gptq_quantize(weight, hessian, args.bits, group_size=args.group_size)
    q_naive = naive()
    gap = (q_ours - q_naive).abs()
    flipped = (gap > packed.scales[:, packed.g_idx.long()] / 2).float().mean().item()
    tokens = x[:512]

    def rel_error(q):
        return ((tokens @ (q - weight).T) ** 2).sum().item() / (
            (tokens @ weight.T) ** 2
        ).sum().item()

    # the comparison run above was the warm-up of both
    medians = interleaved_medians({"ours": ours, "naive": naive}, repeats=args.repeats, warmup=0)
    ratio = medians["naive"] / medians["ours"]
    table = markdown_table(
        ["Implementation", "Time per matrix vs naive", "Relative output error"],
        [
            [
                "gptq_quantize (lazy batches, B = 128)",
                f"{1 / ratio:.3f}× ({ratio:.1f}× faster)",
                f"{rel_error(q_ours):.3e}",
            ],
            ["naive per-column loop", "1.000×", f"{rel_error(q_naive):.3e}"],
        ],
    )
    command = "python " + " ".join(
        shlex.quote(a) for a in ["packages/sparse-ft/benchmarks/bench_gptq.py", *sys.argv[1:]]
    )
    notes = [
        f"fp32 {n} × {n} weight (randn × 0.02), {args.bits} bits, asymmetric, dynamic groups of "
        f"{args.group_size}, percdamp 0.01; H = 2 XᵀX / {2 * n} from correlated random tokens; "
        f"{args.threads} torch thread(s); medians of {args.repeats} interleaved repeats after one "
        "warm-up, one process (target: >= 5× at 2048 × 2048).",
        f"Same algorithm, different fp32 rounding order: max |Q_ours - Q_naive| = "
        f"{gap.max().item():.1e}: {flipped:.2%} of the weights on a neighbouring level (a "
        "rounding close to a tie flipped by last-bit differences), the rest equal up to the "
        "last bits of the scales; the tests check equality in fp64.",
    ]
    print(table)
    print(f"ours {medians['ours']:.3f} s, naive {medians['naive']:.3f} s, ratio {ratio:.2f}")
    print(f"max |Q_ours - Q_naive| {gap.max().item():.2e}, other level: {flipped:.4%}")
    if not args.no_write:
        append_section(
            args.output,
            f"sparse-ft: GPTQ time per matrix, lazy batches vs naive loop ({n}×{n})",
            command,
            table,
            notes=notes,
        )


if __name__ == "__main__":
    main()
