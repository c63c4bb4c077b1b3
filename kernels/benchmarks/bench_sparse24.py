"""sparse24 benchmark: the 2:4 selector vs a topk baseline; on CUDA also ELAS spec §3.6 targets 1, 2, 5.

    python kernels/benchmarks/bench_sparse24.py [--tokens 4096] [--features 2048] [--repeats 7]

CPU (fp32): wall-clock medians of interleaved repeats in one process, as ratios to the topk
baseline: `torch.topk(|v|, 2)` per group of 4 + scatter of the mask (what the tie rule replaces:
topk's order among equal values is unspecified), for the select alone (input relu^2 already
computed) and fused with the squared ReLU. Also whether the baseline's output equals ours.
The Triton kernel is not timed on CPU (the interpreter measures numpy, not the kernel).

CUDA (bf16, `triton.testing.do_bench` medians), spec §3.6:
  1. fused relu^2 + select kernel: bytes moved / time as a fraction of the HBM peak (--hbm-peak-tbs,
     default from the device name), T x F = 16k x 4k and 16k x 8k, masked and compact outputs;
  2. sparse GEMM s [T, F] (2:4) @ w [F, r] vs cuBLAS dense, cuSPARSELt and CUTLASS, GEMM alone
     (s compressed beforehand) and `sparse24_mm` with its compression;
  5. sparse vs dense-fallback output: max |diff| / max |out| (target within rtol 2e-2, atol 1e-2).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from layerwise_kernels.sparse24 import relu2_sparsify_24, sparse24_mm, sparsify_24
from layerwise_kernels.sparse24.mm import _pick, _subclass

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
# HBM peaks (TB/s) of the SXM parts; anything else needs --hbm-peak-tbs.
HBM_PEAK_TBS = {"H100": 3.35, "H200": 4.8, "A100": 2.04}


def topk_select(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline: the 2 largest |v| of each group of 4 by torch.topk, scattered into a mask."""
    groups = v.reshape(*v.shape[:-1], v.shape[-1] // 4, 4)
    idx = torch.topk(groups.abs(), 2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).reshape(v.shape)
    return torch.where(mask, v, torch.zeros((), dtype=v.dtype)), mask


def topk_relu2_select(y1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.relu(y1)
    return topk_select(v * v)


def _inputs(tokens: int, features: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    # Shifted so that relu^2 is ~84% zeros, as ELAS / Haziza et al. report after warm-up.
    return (torch.randn(tokens, features, generator=gen) - 1.0).to(device, dtype)


def bench_cpu(tokens: int, features: int, repeats: int) -> str:
    y1 = _inputs(tokens, features, "cpu", torch.float32)
    v = torch.relu(y1) ** 2
    fns = {
        "select, ours (torch reference)": lambda: sparsify_24(v, backend="torch"),
        "select, topk baseline": lambda: topk_select(v),
        "relu^2 + select, ours (torch reference)": lambda: relu2_sparsify_24(y1, backend="torch"),
        "relu^2 + select, topk baseline": lambda: topk_relu2_select(y1),
    }
    medians = interleaved_medians(fns, repeats=repeats)
    ours_s = sparsify_24(v, backend="torch")[0]
    same = torch.equal(topk_select(v)[0], ours_s)
    sparsity = float((v == 0).float().mean())
    rows = []
    for name, sec in medians.items():
        base = medians[name.split(",")[0] + ", topk baseline"]
        rows.append([name, f"{sec * 1e3:.1f} ms", f"{sec / base:.2f}×"])
    table = markdown_table(["Implementation", "Median", "Ratio to topk"], rows)
    return table + (
        f"\n\nrelu^2 sparsity of the input: {sparsity:.1%}; topk's selected values equal ours: "
        f"{'yes' if same else 'no'} (ties among zeros change the mask, not the values)."
    )


def _hbm_peak(arg: float | None) -> float:
    if arg:
        return arg
    name = torch.cuda.get_device_name(0)
    for key, tbs in HBM_PEAK_TBS.items():
        if key in name:
            return tbs
    raise SystemExit(f"unknown HBM peak for {name!r}: pass --hbm-peak-tbs")


def _gemm_rows(t: int, f: int, r: int) -> list[list[str]]:
    """One row per sparse backend: s [t, f] (2:4, relu^2 output) @ w [f, r] in bf16."""
    from triton.testing import do_bench

    s = relu2_sparsify_24(_inputs(t, f, "cuda", torch.bfloat16)).values
    w = (torch.randn(f, r, device="cuda") * f**-0.5).to(torch.bfloat16)
    dense_ms = do_bench(lambda: s @ w, return_mode="median")
    want = (s @ w).float()
    rows = []
    for backend in ("cusparselt", "cutlass"):
        if _pick(s.device, s.dtype, backend) is None:
            rows.append([f"{t}×{f}×{r}", backend, "unavailable", "", "", ""])
            continue
        compressed = _subclass(backend).from_dense(s)
        gemm_ms = do_bench(lambda c=compressed: torch.mm(c, w), return_mode="median")
        full_ms = do_bench(lambda b=backend: sparse24_mm(s, w, backend=b), return_mode="median")
        got = sparse24_mm(s, w, backend=backend).float()
        err = float((got - want).abs().max() / want.abs().max())
        rows.append([
            f"{t}×{f}×{r}", backend, f"{dense_ms * 1e3:.0f} µs",
            f"{dense_ms / gemm_ms:.2f}×", f"{dense_ms / full_ms:.2f}×", f"{err:.1e}",
        ])  # fmt: skip
    return rows


def bench_cuda(hbm_peak_tbs: float | None) -> str:
    from triton.testing import do_bench

    peak = _hbm_peak(hbm_peak_tbs) * 1e12
    parts = []
    # Target 1: bandwidth of the fused kernel.
    rows = []
    for t, f in ((16384, 4096), (16384, 8192)):
        y1 = _inputs(t, f, "cuda", torch.bfloat16)
        for out in ("masked", "compact"):
            ms = do_bench(lambda y=y1, o=out: relu2_sparsify_24(y, out=o), return_mode="median")
            # Bytes actually moved: read y1 (2 B); masked writes bf16 values + a bool mask,
            # compact writes F/2 bf16 values + one index byte per group.
            moved = t * f * (2 + (2 + 1 if out == "masked" else 1 + 0.25))
            spec = t * f * (2 + (2 if out == "masked" else 1.125))  # spec §3.6's count
            sec = ms * 1e-3
            rows.append([
                f"{t}×{f}", out, f"{ms * 1e3:.1f} µs", f"{moved / sec / 1e9:.0f} GB/s",
                f"{moved / sec / peak:.0%}", f"{spec / sec / peak:.0%}",
            ])  # fmt: skip
        ms = do_bench(lambda y=y1: topk_relu2_select(y), return_mode="median")
        rows.append([f"{t}×{f}", "topk baseline (torch)", f"{ms * 1e3:.1f} µs", "", "", ""])
    parts.append(
        "Target 1 (fused relu^2 + select, bf16; ≥ 75% of HBM peak):\n\n"
        + markdown_table(
            ["T×F", "Output", "Time", "Bandwidth", "of peak (bytes moved)", "of peak (spec bytes)"],
            rows,
        )
    )
    # Targets 2 and 5: sparse GEMM vs cuBLAS dense, and agreement with the fallback.
    rows = []
    for t, f, r in ((16384, 4096, 256), (16384, 4096, 512), (16384, 8192, 512)):
        rows += _gemm_rows(t, f, r)
    header = [
        "T×F×r", "Backend", "cuBLAS dense", "Speed-up, GEMM alone",
        "Speed-up, sparse24_mm (+ compression)", "Max rel. diff vs dense",
    ]  # fmt: skip
    parts.append(
        "Targets 2 (sparse GEMM ≥ 1.2× cuBLAS at T ≥ 16k, F ≥ 4096, r ≥ 512) and 5 (max |sparse - "
        "dense| / max |dense| within 1e-2):\n\n" + markdown_table(header, rows)
    )
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="CPU: rows T")
    parser.add_argument("--features", type=int, default=2048, help="CPU: F (multiple of 4)")
    parser.add_argument("--repeats", type=int, default=7, help="CPU: repeats (>= 5) for medians")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU: torch threads (default: torch's)"
    )
    parser.add_argument("--hbm-peak-tbs", type=float, default=None, help="CUDA: HBM peak, TB/s")
    parser.add_argument("--output", type=Path, default=DOCS, help="markdown file to append to")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if cuda:
        body = bench_cuda(args.hbm_peak_tbs)
        title = "sparse24 (ELAS 2:4 selector and sparse GEMM), spec §3.6 targets 1, 2, 5"
        note = "CUDA, bf16: `triton.testing.do_bench` medians; ratios measured in this one run."
    else:
        body = bench_cpu(args.tokens, args.features, args.repeats)
        title = f"sparse24 2:4 selector vs topk, {args.tokens} × {args.features}"
        note = (
            f"CPU, fp32: wall-clock medians over {args.repeats} interleaved repeats after warm-up, "
            "one process; ratio to the topk baseline (lower is better). The Triton kernel runs "
            "only on CUDA (on CPU `backend='auto'` is the torch reference)."
        )
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    text = append_section(args.output, title, command, body, notes=[note])
    print(text)


if __name__ == "__main__":
    main()
