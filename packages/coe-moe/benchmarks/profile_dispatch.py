"""Where the time of our expert dispatch goes at the paper's expert size (CPU, issue 21 item 3).

    python packages/coe-moe/benchmarks/profile_dispatch.py [--repeats 9] [--output docs/benchmarks.md]

64 experts, K=8, 512 tokens x 1024 -> 704 (the paper's hidden and expert widths), fp32, one torch
thread, forward+backward of the routed experts (`experts_forward`, auto backend = torch's grouped
GEMM on CPU). Each stage is timed on its own, on the tensors the full call makes, as process CPU
time (user + sys) medians of interleaved repeats; sys time is listed apart because the one cost
besides the GEMMs is the kernel's first touch of the freshly allocated expert weight gradients.

Against the official code's per-expert mask loop (`bench_coe.reference_loop`) and the same loop's
GEMMs alone (each expert's three nn.Linear forward+backward on its rows, gathered beforehand): the
loop runs the very GEMMs ours runs, so no dispatch can beat it by more than
loop time / GEMM time. A second process repeats ours vs the loop with THP_MEM_ALLOC_ENABLE=1
(torch's CPU allocator then asks for transparent huge pages for tensors >= 2 MB; read at start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_coe import _LinearExpert, reference_loop
from torch import nn

from coe_moe import experts_forward
from layerwise_core.benchmarking import append_section, markdown_table

ROOT = Path(__file__).resolve().parents[3]
EXPERTS, TOP_K = 64, 8


def _times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(process CPU, sys) median seconds per callable: round-robin repeats after one warm-up."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            fn()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            sys_s = r1.ru_stime - r0.ru_stime
            samples[name].append((r1.ru_utime - r0.ru_utime + sys_s, sys_s))
    return {
        name: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v))
        for name, v in samples.items()
    }


def _case(tokens: int, hidden: int, width: int):
    gen = torch.Generator().manual_seed(0)
    gate_up = torch.randn(EXPERTS, 2 * width, hidden, generator=gen) * hidden**-0.5
    down = torch.randn(EXPERTS, hidden, width, generator=gen) * width**-0.5
    x = torch.randn(tokens, hidden, generator=gen)
    router = torch.randn(EXPERTS, hidden, generator=gen) * hidden**-0.5
    weights, experts = (x @ router.T).softmax(-1).topk(TOP_K)
    dy = torch.randn(tokens, hidden, generator=gen)
    return gate_up, down, x, router, weights, experts, dy


def _backward(fn: Callable[[], torch.Tensor], grad: torch.Tensor, *leaves: torch.Tensor):
    def run() -> None:
        fn().backward(grad)
        for leaf in leaves:
            leaf.grad = None

    return run


def ours_vs_loop(tokens: int, hidden: int, width: int, repeats: int) -> dict[str, list[float]]:
    """(CPU, sys) medians of ours and the per-expert mask loop, fwd+bwd, same weights/routing."""
    gate_up, down, x, _, weights, experts, dy = _case(tokens, hidden, width)
    x.requires_grad_()
    gu, dn = nn.Parameter(gate_up.clone()), nn.Parameter(down.clone())
    modules = nn.ModuleList(
        _LinearExpert(gate_up[i, :width], gate_up[i, width:], down[i]) for i in range(EXPERTS)
    )
    torch.testing.assert_close(
        experts_forward(x, weights, experts, gu, dn),
        reference_loop(x, weights, experts, modules),
        rtol=1e-4,
        atol=1e-4,
    )
    fns = {
        "ours": _backward(lambda: experts_forward(x, weights, experts, gu, dn), dy, x, gu, dn),
        "loop": _backward(lambda: reference_loop(x, weights, experts, modules), dy, x),
    }
    params = list(modules.parameters())
    loop = fns["loop"]
    fns["loop"] = lambda: (loop(), [setattr(p, "grad", None) for p in params])
    return {name: list(t) for name, t in _times(fns, repeats).items()}


def stages(tokens: int, hidden: int, width: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(CPU, sys) medians of each stage of ours, of ours whole, the loop and the loop's GEMMs."""
    gate_up, down, x, router, weights, experts, dy = _case(tokens, hidden, width)
    gmm = getattr(F, "grouped_mm", None) or torch._grouped_mm
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=EXPERTS)
    offs = counts.cumsum(0).to(torch.int32)
    src = order // TOP_K
    rows = x.index_select(0, src)
    gu_t, dn_t = gate_up.transpose(1, 2), down.transpose(1, 2)
    gate, up = gmm(rows, gu_t, offs=offs).chunk(2, dim=-1)
    act = F.silu(gate) * up
    out = gmm(act, dn_t, offs=offs)
    gen = torch.Generator().manual_seed(1)
    d_h = torch.randn(tokens * TOP_K, 2 * width, generator=gen)
    d_o = torch.randn(tokens * TOP_K, hidden, generator=gen)
    # the weight gradients as torch's grouped-GEMM backward makes them: [E, in, out] = x_g^T dy_g
    gu_buf, dn_buf = torch.empty(EXPERTS, hidden, 2 * width), torch.empty(EXPERTS, width, hidden)
    starts = [0, *offs.tolist()[:-1]]
    ends = offs.tolist()

    def dw_reused(a: torch.Tensor, d: torch.Tensor, buf: torch.Tensor) -> Callable[[], None]:
        def run() -> None:  # same GEMMs as the grouped call, into memory touched before
            for g, (s, e) in enumerate(zip(starts, ends, strict=True)):
                torch.mm(a[s:e].T, d[s:e], out=buf[g])

        return run

    leaf_x, leaf_o = x.clone().requires_grad_(), out.clone().requires_grad_()
    leaf_h = torch.cat([gate, up], dim=-1).requires_grad_()
    xr, gur, dnr = x.clone().requires_grad_(), nn.Parameter(gate_up), nn.Parameter(down)
    modules = nn.ModuleList(
        _LinearExpert(gate_up[i, :width], gate_up[i, width:], down[i]) for i in range(EXPERTS)
    )
    params = list(modules.parameters())
    rows_d = rows.clone()
    dy_rows = dy.index_select(0, src)

    def loop_gemms() -> None:  # the loop's GEMMs alone: each expert's fwd+bwd on gathered rows
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            modules[i](rows_d[s:e]).backward(dy_rows[s:e])
        for p in params:
            p.grad = None

    def loop() -> None:
        reference_loop(xr, weights, experts, modules).backward(dy)
        xr.grad = None
        for p in params:
            p.grad = None

    def swiglu(h: torch.Tensor) -> torch.Tensor:
        g, u = h.chunk(2, dim=-1)
        return F.silu(g) * u

    def combine(o: torch.Tensor) -> torch.Tensor:
        pairs = torch.empty_like(o).index_copy(0, order, o)
        return (pairs.view(tokens, TOP_K, -1) * weights.unsqueeze(-1)).sum(dim=1)

    fns = {
        "router: logits, softmax, top-k (in CoELayer, not in experts_forward)": lambda: (
            (x @ router.T).softmax(-1).topk(TOP_K)
        ),
        "sort: argsort, bincount, cumsum": lambda: (
            torch.argsort(flat, stable=True),
            torch.bincount(flat, minlength=EXPERTS).cumsum(0),
        ),
        "gather x rows (index_select) fwd+bwd": _backward(
            lambda: leaf_x.index_select(0, src), rows, leaf_x
        ),
        "gate_up GEMM fwd": lambda: gmm(rows, gu_t, offs=offs),
        "gate_up GEMM bwd dX": lambda: gmm(d_h, gate_up, offs=offs),
        "gate_up GEMM bwd dW (torch grouped, fresh gradient)": lambda: gmm(rows.T, d_h, offs=offs),
        "gate_up GEMM bwd dW (same mm, reused memory)": dw_reused(rows, d_h, gu_buf),
        "SwiGLU activation fwd+bwd": _backward(lambda: swiglu(leaf_h), act, leaf_h),
        "down GEMM fwd": lambda: gmm(act, dn_t, offs=offs),
        "down GEMM bwd dX": lambda: gmm(d_o, down, offs=offs),
        "down GEMM bwd dW (torch grouped, fresh gradient)": lambda: gmm(act.T, d_o, offs=offs),
        "down GEMM bwd dW (same mm, reused memory)": dw_reused(act, d_o, dn_buf),
        "unpermute (index_copy), weight, sum over K fwd+bwd": _backward(
            lambda: combine(leaf_o), dy, leaf_o
        ),
        "ours, whole (experts_forward fwd+bwd)": _backward(
            lambda: experts_forward(xr, weights, experts, gur, dnr), dy, xr, gur, dnr
        ),
        "per-expert mask loop, whole (official code)": loop,
        "per-expert mask loop, its GEMMs alone": loop_gemms,
    }
    return _times(fns, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--width", type=int, default=704)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--compare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = (args.tokens, args.hidden, args.width)
    if args.compare_only:
        print(json.dumps(ours_vs_loop(*size, args.repeats)))
        return
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    print("stages ...", file=sys.stderr)
    st = stages(*size, args.repeats)
    print("ours vs loop, default allocator / THP_MEM_ALLOC_ENABLE=1 ...", file=sys.stderr)
    child = [sys.executable, __file__, "--compare-only", "--repeats", str(args.repeats)]
    child += ["--tokens", str(args.tokens), "--hidden", str(args.hidden)]
    child += ["--width", str(args.width)]
    compare = {}
    for label, extra in (("default allocator", {}), ("THP_MEM_ALLOC_ENABLE=1", {"THP_MEM_ALLOC_ENABLE": "1"})):  # fmt: skip
        env = {**os.environ, **extra}
        out = subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
        compare[label] = json.loads(out.strip().splitlines()[-1])

    total = st["ours, whole (experts_forward fwd+bwd)"][0]
    rows = [[name, f"{cpu * 1e3:.1f}", f"{sys_s * 1e3:.1f}", f"{100 * cpu / total:.1f}%"]
            for name, (cpu, sys_s) in st.items()]  # fmt: skip
    gemm_names = [n for n in st if "GEMM" in n and "fresh" not in n and "loop" not in n]
    gemm = sum(st[n][0] for n in gemm_names)
    faults = sum(st[n][0] for n in st if "fresh" in n) - sum(st[n][0] for n in st if "reused" in n)
    other = [n for n in st if n.startswith(("sort", "gather", "SwiGLU", "unpermute"))]
    rest = sum(st[n][0] for n in other)
    loop_total = st["per-expert mask loop, whole (official code)"][0]
    loop_gemm = st["per-expert mask loop, its GEMMs alone"][0]
    flops = 3 * 2 * args.tokens * TOP_K * 3 * args.hidden * args.width
    summary = [
        ["GEMMs (fwd, dX, dW into reused memory)", f"{gemm * 1e3:.0f} ms",
         f"{100 * gemm / total:.0f}%", f"{flops / gemm / 1e9:.0f} GFLOP/s"],
        ["first touch of the fresh weight gradients (dW fresh - dW reused)",
         f"{faults * 1e3:.0f} ms", f"{100 * faults / total:.0f}%", ""],
        ["sort, gather, activation, unpermute/combine", f"{rest * 1e3:.0f} ms",
         f"{100 * rest / total:.0f}%", ""],
        ["ours, whole", f"{total * 1e3:.0f} ms", "100%", f"{flops / total / 1e9:.0f} GFLOP/s"],
        ["loop, whole / loop, its GEMMs alone", f"{loop_total * 1e3:.0f} / {loop_gemm * 1e3:.0f} ms",
         f"{100 * loop_total / total:.0f}% / {100 * loop_gemm / total:.0f}%",
         f"{flops / loop_gemm / 1e9:.0f} GFLOP/s (GEMMs)"],
    ]  # fmt: skip
    ratio_rows = []
    for label, res in compare.items():
        ratio = res["loop"][0] / res["ours"][0]
        ratio_rows.append([label, f"{res['ours'][0] * 1e3:.0f} ms ({res['ours'][1] * 1e3:.0f} sys)",
                           f"{res['loop'][0] * 1e3:.0f} ms ({res['loop'][1] * 1e3:.0f} sys)",
                           f"{ratio:.2f}×"])  # fmt: skip
    body = "\n".join(
        [
            f"- {EXPERTS} experts, K={TOP_K}, {args.tokens} tokens × {args.hidden} → {args.width} "
            f"(about {args.tokens * TOP_K // EXPERTS} rows per expert), fp32, 1 torch thread, "
            "forward+backward of the routed experts. Each stage timed alone on the tensors the "
            f"full call makes: process CPU time (user+sys) medians of {args.repeats} interleaved "
            "repeats after one warm-up; sys listed apart.",
            f"- Bound: the loop runs the same GEMMs; with a dispatch costing nothing, ours would "
            f"take the GEMM time ({gemm * 1e3:.0f} ms) and the loop {loop_total * 1e3:.0f} ms: "
            f"at most {loop_total / gemm:.2f}× here.",
            "",
            markdown_table(["Stage", "CPU ms", "of which sys ms", "of ours, whole"], rows),
            "",
            markdown_table(["Where ours' time goes", "CPU time", "Share", "Rate"], summary),
            "",
            "Ours vs the per-expert mask loop, each row one process (medians of "
            f"{args.repeats} interleaved repeats):",
            "",
            markdown_table(["Allocator", "Ours", "Loop", "Loop / ours"], ratio_rows),
        ]
    )
    title = "coe-moe: where the expert dispatch's time goes at the paper's expert size"
    print(append_section(args.output, title, command, body))


if __name__ == "__main__":
    main()
