"""top2_confidence benchmark: the fused op vs softmax + topk; appends a section to docs/benchmarks.md.

    python kernels/benchmarks/bench_top2_confidence.py [--rows 256] [--vocab 126464] [--repeats 7]

What a masked-diffusion sampler needs per position (argmax, its probability, the top-1/top-2 gap)
for `rows` positions of a LLaDA-sized vocabulary. Baselines: "softmax + topk" (materialise the
probabilities, topk(2) on them, gap = log p1 - log p2) and "softmax + gather" (LLaDA's reference
path: argmax, softmax, gather; no gap). On CUDA: `triton.testing.do_bench` medians (ms) for fp32
and bf16 logits, and `torch.cuda.max_memory_allocated` above the inputs. On CPU: fp32 wall-clock
medians of interleaved repeats in one process, as ratios to softmax + topk, and the peak RSS above
the inputs, each implementation in a fresh process.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from layerwise_kernels.top2_confidence import top2_confidence

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
BASELINE = "softmax + topk"


def _softmax_topk(logits: torch.Tensor):
    p = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(p, 2, dim=-1)
    return (
        top.indices[..., 0],
        top.values[..., 0],
        top.values[..., 0].log() - top.values[..., 1].log(),
    )


def _softmax_gather(logits: torch.Tensor):
    token = logits.argmax(-1)
    p = torch.softmax(logits.float(), dim=-1)
    return token, p.gather(-1, token[..., None]).squeeze(-1)


IMPLEMENTATIONS = {
    "ours, Triton": lambda z: top2_confidence(z, backend="triton"),
    "ours, torch reference": lambda z: top2_confidence(z, backend="torch"),
    BASELINE: _softmax_topk,
    "softmax + gather (LLaDA, no gap)": _softmax_gather,
}


def _inputs(rows: int, vocab: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(rows, vocab, generator=gen) * 3).to(device, dtype)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_child(name: str, rows: int, vocab: int) -> None:
    """In a fresh process: print the peak RSS (bytes) above the inputs of one call."""
    fn = IMPLEMENTATIONS[name]
    fn(_inputs(4, 64, "cpu", torch.float32))  # warm-up: libraries, threads
    logits = _inputs(rows, vocab, "cpu", torch.float32)
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark so that imports do not count
    fn(logits)
    print(max(_rss_kib("VmHWM") - base, 0) * 1024)


def bench_cpu(rows: int, vocab: int, repeats: int) -> str:
    names = [n for n in IMPLEMENTATIONS if "Triton" not in n]
    logits = _inputs(rows, vocab, "cpu", torch.float32)
    medians = interleaved_medians({n: (lambda f=IMPLEMENTATIONS[n]: f(logits)) for n in names},
                                  repeats=repeats)  # fmt: skip
    peaks = {}
    for name in names:
        cmd = [sys.executable, __file__, "--peak-rss-child", name, str(rows), str(vocab)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[name] = int(proc.stdout.strip().splitlines()[-1])
    table = []
    for name in names:
        time_ratio = medians[name] / medians[BASELINE]
        mem_ratio = peaks[name] / max(peaks[BASELINE], 1)
        table.append(
            [name, f"{time_ratio:.2f}×", f"{mem_ratio:.2f}× ({peaks[name] / 2**20:.0f} MiB)"]
        )
    return markdown_table(["Implementation", "Time (ratio)", "Peak RSS above inputs"], table)


def bench_cuda(rows: int, vocab: int) -> str:
    from triton.testing import do_bench

    table = []
    for name, fn in IMPLEMENTATIONS.items():
        cells = [name]
        for dtype in (torch.float32, torch.bfloat16):
            logits = _inputs(rows, vocab, "cuda", dtype)
            fn(logits)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(logits)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            ms = do_bench(lambda f=fn, z=logits: f(z), return_mode="median")
            cells += [f"{ms:.3f} ms", f"{peak:.1f} MiB"]
        table.append(cells)
    header = ["Implementation", "fp32 time", "fp32 peak mem", "bf16 time", "bf16 peak mem"]
    return markdown_table(header, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="positions (B * L)")
    parser.add_argument("--vocab", type=int, default=126464, help="vocabulary (LLaDA: 126464)")
    parser.add_argument("--repeats", type=int, default=7, help="CPU: repeats (>= 5) for medians")
    parser.add_argument("--output", type=Path, default=DOCS, help="markdown file to append to")
    parser.add_argument("--peak-rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_rss_child:
        name, rows, vocab = args.peak_rss_child
        peak_rss_child(name, int(rows), int(vocab))
        return
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    cuda = torch.cuda.is_available()
    body = (
        bench_cuda(args.rows, args.vocab)
        if cuda
        else bench_cpu(args.rows, args.vocab, args.repeats)
    )
    note = (
        "CUDA: `triton.testing.do_bench` medians; peak = `torch.cuda.max_memory_allocated` above "
        "the inputs."
        if cuda
        else f"CPU, fp32: ratio to {BASELINE} of wall-clock medians over {args.repeats} "
        "interleaved repeats after warm-up, one process (lower is better); the Triton kernel runs "
        "only on CUDA (on CPU `backend='auto'` is the torch reference); peak RSS above the inputs "
        "(VmHWM reset after imports), each implementation in a fresh process."
    )
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    text = append_section(
        args.output,
        f"top2_confidence, {args.rows} positions × vocabulary {args.vocab}",
        command,
        body,
        notes=[note, "Outputs per position: argmax, its softmax probability, top-1/top-2 gap."],
    )
    print(text)


if __name__ == "__main__":
    main()
