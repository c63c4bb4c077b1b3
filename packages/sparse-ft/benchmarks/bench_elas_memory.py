"""Saved-activation bytes and CPU time of ELAS's FFN: dense low-rank ReLU^2 vs ELAS STE vs masked.

    python packages/sparse-ft/benchmarks/bench_elas_memory.py [--seq 256] [--batches 1 4 16]

Arms (`sparse_ft.ELASFFN`, low-rank Up and Down):
- dense: S inactive (sparse=False): the low-rank ReLU^2 FFN of LORO + ReLU^2, autograd-native.
- ELAS STE (paper): S active, straight-through backward; keeps y1 and recomputes s in backward.
- ELAS masked (ours): S active, backward only through kept slots; keeps s compact.

Saved bytes: every tensor autograd saves in one forward, counted once per storage, parameters
excluded (`sparse_ft.elas_ffn.saved_activation_bytes`, saved-tensor hooks), against the per-token
count of `analytic_saved_bytes` times the tokens, for bf16 and fp32, at the 60M and 1B shapes of
ELAS (d, F = 1.5 d_ff rounded up to a multiple of 64, r). Time: forward + backward in fp32 at
the 60M shape, one torch thread, medians of the thread's CPU time over interleaved repeats, as
ratios to the dense arm.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from layerwise_core.benchmarking import append_section, markdown_table
from sparse_ft.elas_ffn import ELASFFN, analytic_saved_bytes, saved_activation_bytes

ROOT = Path(__file__).resolve().parents[3]
SHAPES = {"60m": (512, 2112, 128), "1b": (2048, 8192, 512)}  # (d, F, r): ELAS spec §2.1
ARMS = ("dense", "ste", "masked")
NAMES = {"dense": "dense low-rank ReLU²", "ste": "ELAS STE", "masked": "ELAS masked (ours)"}
PAPER_RATIO = 101.76 / 181.71  # ELAS §2.3: FFN activation memory, LORO -> ELAS, batch 128


def build(arm: str, d: int, f: int, r: int, dtype: torch.dtype) -> ELASFFN:
    torch.manual_seed(0)
    grad = "masked" if arm == "masked" else "ste"
    return ELASFFN(d, f, r, sparse=arm != "dense", warmup_steps=0, grad=grad, dtype=dtype)


def spec_bytes(arm: str, d: int, f: int, r: int, e: int) -> float:
    """ELAS spec §3.5's per-token count: x, h1, h2 plus dense: y1, y2; masked: compact s with
    nibble-packed indices (F/8 bytes); STE: y1 and the compact s."""
    outer = e * (d + 2 * r)
    compact = e * f / 2 + f / 8
    return outer + {"dense": 2 * e * f, "ste": e * f + compact, "masked": compact}[arm]


def analytic_rows() -> list[list[str]]:
    rows = []
    for shape, (d, f, r) in SHAPES.items():
        for name, e in (("bf16", 2), ("fp32", 4)):
            ours = {a: analytic_saved_bytes(a, d, f, r, e) for a in ARMS}
            spec = {a: spec_bytes(a, d, f, r, e) for a in ARMS}
            rows.append(
                [
                    shape,
                    name,
                    f"{ours['ste'] / ours['dense']:.3f}×",
                    f"{spec['ste'] / spec['dense']:.3f}×",
                    f"{ours['masked'] / ours['dense']:.3f}×",
                    f"{spec['masked'] / spec['dense']:.3f}×",
                ]
            )
    return rows


def memory_rows(seq: int, batches: list[int]) -> tuple[list[list[str]], dict[str, float]]:
    rows, ratios = [], {}
    for shape, (d, f, r) in SHAPES.items():
        for dtype in (torch.bfloat16, torch.float32):
            e = torch.finfo(dtype).bits // 8
            for batch in batches:
                tokens = batch * seq
                x = torch.randn(batch, seq, d, dtype=dtype, requires_grad=True)
                measured = {}
                for arm in ARMS:
                    got = saved_activation_bytes(build(arm, d, f, r, dtype), x)
                    want = tokens * analytic_saved_bytes(arm, d, f, r, e)
                    measured[arm] = (got, want)
                dense = measured["dense"][0]
                cells = []
                for arm in ARMS:
                    got, want = measured[arm]
                    check = "=" if got == want else f"≠ {want / 2**20:.1f}"
                    ratio = "" if arm == "dense" else f" ({got / dense:.3f}×)"
                    cells.append(f"{got / 2**20:.2f}{ratio} {check}")
                name = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
                for arm in ARMS:
                    ratios[f"{shape} {name} {arm}"] = measured[arm][0] / dense
                rows.append([f"{shape} (d {d}, F {f}, r {r})", name, f"{batch}×{seq}", *cells])
    return rows, ratios


def cpu_time_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU seconds of this thread per call (one torch thread: every op runs here), round-
    robin after one warm-up round: wall time on a shared 2-core box mostly measures the others."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.thread_time()
            fn()
            samples[name].append(time.thread_time() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def time_rows(seq: int, batches: list[int], repeats: int) -> list[list[str]]:
    torch.set_num_threads(1)
    rows = []
    d, f, r = SHAPES["60m"]
    for batch in batches:
        x = torch.randn(batch, seq, d, requires_grad=True)
        modules = {arm: build(arm, d, f, r, torch.float32) for arm in ARMS}

        def step(m: ELASFFN, x: torch.Tensor = x) -> None:
            m(x).sum().backward()

        med = cpu_time_medians({arm: (lambda m=m: step(m)) for arm, m in modules.items()}, repeats)
        rows.append(
            [
                f"60m, {batch}×{seq}",
                f"{med['dense'] * 1e3:.1f} ms",
                f"{med['ste'] / med['dense']:.2f}×",
                f"{med['masked'] / med['dense']:.2f}×",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--time-batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    mem, ratios = memory_rows(args.seq, args.batches)
    print(markdown_table(["", "", "", *ARMS], mem), file=sys.stderr)
    times = time_rows(args.seq, args.time_batches, args.repeats)
    body = "\n\n".join(
        [
            markdown_table(
                ["Shape", "dtype", "batch × seq", *(f"{NAMES[a]}, MiB" for a in ARMS)], mem
            ),
            markdown_table(
                [
                    "Analytic, per token",
                    "dtype",
                    "STE / dense (ours: y1)",
                    "STE / dense (spec §3.5: y1 + compact s)",
                    "masked / dense (ours: uint8 indices)",
                    "masked / dense (spec §3.5: 4-bit indices)",
                ],
                analytic_rows(),
            ),
            markdown_table(
                ["fp32, forward + backward", "dense", "STE / dense", "masked / dense"], times
            ),
        ]
    )
    script = Path(__file__).resolve().relative_to(ROOT)
    command = shlex.join(["python", str(script), *sys.argv[1:]])
    text = append_section(
        args.output,
        "sparse-ft: ELAS FFN saved activations, dense low-rank ReLU² vs ELAS STE vs masked",
        command,
        body,
        notes=[
            "Saved bytes: tensors autograd keeps after one forward (saved-tensor hooks, each "
            "storage once, parameters excluded), in MiB; (×) = ratio to the dense arm; '=' = equal "
            "to the analytic count tokens × `analytic_saved_bytes` (x, h1, h2 plus dense: relu(y1) "
            "and y2; STE: y1; masked: F/2 values + F/4 uint8 indices).",
            f"Paper (ELAS §2.3): LORO → ELAS FFN activation memory ratio {PAPER_RATIO:.3f} (−44%); "
            f"here (bf16, 1B shape) STE {ratios['1b bf16 ste']:.3f}, masked "
            f"{ratios['1b bf16 masked']:.3f}.",
            f"Time: fp32, one torch thread, CPU time of the thread (`time.thread_time`), medians "
            f"of {args.repeats} interleaved repeats of forward + backward; torch select reference "
            "and dense masked GEMM (no sparse kernels on CPU).",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()
