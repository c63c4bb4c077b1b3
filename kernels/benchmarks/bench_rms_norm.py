"""rms_norm benchmark: ours vs HF LlamaRMSNorm; appends a section to docs/benchmarks.md.

    python kernels/benchmarks/bench_rms_norm.py [--sizes 4096x2048,...] [--repeats 7]

On CUDA: bf16, `triton.testing.do_bench` medians (ms, CUDA-synchronised) of forward, backward and
forward+backward, and `torch.cuda.max_memory_allocated` above the inputs, for our Triton kernel, our
torch reference, HF `LlamaRMSNorm`, and HF `LlamaRMSNorm` followed by `* scale` (how LayerNorm
Scaling runs without the fused scale). On CPU: fp32, wall-clock medians of >= 5 repeats after a
warm-up, all in this one process and interleaved, quoted as ratios to HF `LlamaRMSNorm`; peak memory
is the peak RSS above the inputs (VmHWM, reset through /proc/self/clear_refs so that imports do not
count), each implementation in a fresh process.
Our op runs with scale = 1/sqrt(LAYER); its cost does not depend on the value.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from layerwise_kernels import rms_norm

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
EPS = 1e-6
LAYER = 6
SCALE = 1 / math.sqrt(LAYER)
CPU_SIZES = "1024x1024,4096x2048,2048x4096"
GPU_SIZES = "4096x2048,8192x4096,16384x8192"
HF = "HF LlamaRMSNorm"
IMPLEMENTATIONS = {
    "cuda": ["ours (Triton)", "ours (torch reference)", HF, f"{HF} × scale"],
    "cpu": ["ours (torch reference)", HF, f"{HF} × scale"],
}


def _make(name: str, hidden: int, device: str, dtype: torch.dtype):
    """Return (forward function of x, its parameters) for one implementation."""
    if name.startswith(HF):
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        norm = LlamaRMSNorm(hidden, eps=EPS).to(device, dtype)
        if name == HF:
            return norm, [norm.weight]
        return (lambda x: norm(x) * SCALE), [norm.weight]
    weight = torch.ones(hidden, device=device, dtype=dtype, requires_grad=True)
    backend = "triton" if name == "ours (Triton)" else "torch"
    return (lambda x: rms_norm(x, weight, EPS, SCALE, backend=backend)), [weight]


def _inputs(rows: int, hidden: int, device: str, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=gen).to(device, dtype).requires_grad_()
    dy = torch.randn(rows, hidden, generator=gen).to(device, dtype)
    return x, dy


def _bench_cuda_one(name: str, rows: int, hidden: int) -> list[str]:
    from triton.testing import do_bench

    fn, params = _make(name, hidden, "cuda", torch.bfloat16)
    x, dy = _inputs(rows, hidden, "cuda", torch.bfloat16)
    grads = [x, *params]
    fwd = do_bench(lambda: fn(x), return_mode="median")
    y = fn(x)
    bwd = do_bench(
        lambda: y.backward(dy, retain_graph=True), grad_to_none=grads, return_mode="median"
    )
    full = do_bench(lambda: fn(x).backward(dy), grad_to_none=grads, return_mode="median")
    y = None  # drop the retained graph before measuring memory
    for t in grads:
        t.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(x).backward(dy)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    return [f"{fwd:.3f} ms", f"{bwd:.3f} ms", f"{full:.3f} ms", f"{peak / 2**20:.1f} MiB"]


def bench_cuda(rows: int, hidden: int) -> dict[str, list[str]]:
    return {name: _bench_cuda_one(name, rows, hidden) for name in IMPLEMENTATIONS["cuda"]}


def _time_cpu(fn, x, dy, inner: int) -> tuple[float, float, float]:
    """Seconds per call of forward (recording the graph), backward, and both, over `inner` calls."""
    fwd = bwd = full = 0.0
    for _ in range(inner):
        t0 = time.perf_counter()
        y = fn(x)
        t1 = time.perf_counter()
        y.backward(dy)
        t2 = time.perf_counter()
        x.grad = None
        t3 = time.perf_counter()
        fn(x).backward(dy)
        t4 = time.perf_counter()
        x.grad = None
        fwd, bwd, full = fwd + t1 - t0, bwd + t2 - t1, full + t4 - t3
    return fwd / inner, bwd / inner, full / inner


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def cpu_peak_rss_child(name: str, rows: int, hidden: int) -> None:
    """In a fresh process: print the peak RSS (bytes) above the inputs of one forward+backward."""
    fn, _ = _make(name, 64, "cpu", torch.float32)  # warm-up at a tiny size: libraries, threads
    x, dy = _inputs(8, 64, "cpu", torch.float32)
    fn(x).backward(dy)
    fn, _ = _make(name, hidden, "cpu", torch.float32)
    x, dy = _inputs(rows, hidden, "cpu", torch.float32)
    base = _rss_kib("VmRSS")
    try:
        # Reset the high-water mark, or imports (transformers' above all) would set the peak.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        print("cannot reset the peak RSS: getrusage's peak includes imports", file=sys.stderr)
        reset = False
    fn(x).backward(dy)
    peak = _rss_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(max(peak - base, 0) * 1024)


def bench_cpu(rows: int, hidden: int, repeats: int) -> dict[str, list[str]]:
    names = IMPLEMENTATIONS["cpu"]
    made = {name: _make(name, hidden, "cpu", torch.float32)[0] for name in names}
    x, dy = _inputs(rows, hidden, "cpu", torch.float32)
    for fn in made.values():  # warm-up
        _time_cpu(fn, x, dy, inner=2)
    t0 = time.perf_counter()
    _time_cpu(made[HF], x, dy, inner=1)
    inner = max(1, min(50, int(0.05 / max(time.perf_counter() - t0, 1e-6))))
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(repeats):  # interleaved, so that drifts of a noisy machine hit all alike
        for name in names:
            samples[name].append(_time_cpu(made[name], x, dy, inner))
    medians = {n: [statistics.median(s[i] for s in samples[n]) for i in range(3)] for n in names}
    peaks = {}
    for name in names:
        cmd = [sys.executable, __file__, "--peak-rss-child", name, str(rows), str(hidden)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[name] = int(proc.stdout.strip().splitlines()[-1])
    out = {}
    for name in names:
        ratios = [medians[name][i] / medians[HF][i] for i in range(3)]
        ratios.append(peaks[name] / peaks[HF])
        out[name] = [f"{r:.2f}×" for r in ratios]
    out[HF] = ["1.00×", "1.00×", "1.00×", f"1.00× ({peaks[HF] / 2**20:.1f} MiB)"]
    return out


def _machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="comma-separated ROWSxHIDDEN")
    parser.add_argument("--repeats", type=int, default=7, help="CPU: repeats (>= 5) for medians")
    parser.add_argument("--output", type=Path, default=DOCS, help="markdown file to append to")
    parser.add_argument("--peak-rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_rss_child:
        name, rows, hidden = args.peak_rss_child
        cpu_peak_rss_child(name, int(rows), int(hidden))
        return
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default_sizes = CPU_SIZES if device == "cpu" else GPU_SIZES
    sizes = [tuple(map(int, size.split("x"))) for size in (args.sizes or default_sizes).split(",")]

    script = Path(__file__).resolve().relative_to(ROOT)
    command = shlex.join(["python", str(script), *sys.argv[1:]])
    lines = [
        f"\n## rms_norm ({device.upper()}, {datetime.date.today().isoformat()})\n",
        f"- Machine: {_machine(device)}",
        f"- torch {torch.__version__}"
        + (f", triton {__import__('triton').__version__}" if device == "cuda" else ""),
        f"- Command: `{command}` (from the repository root)",
    ]
    if device == "cuda":
        lines.append(
            "- bf16; `triton.testing.do_bench` medians, CUDA-synchronised; peak memory = "
            "`torch.cuda.max_memory_allocated` above the inputs during one forward+backward."
        )
    else:
        lines.append(
            f"- fp32; ratio to {HF} of wall-clock medians over {args.repeats} interleaved repeats "
            "after a warm-up, in one process (lower is better); peak memory = peak RSS (VmHWM, reset "
            "after imports) above the inputs during one forward+backward, each implementation in a "
            "fresh process (HF's in MiB in brackets)."
        )
    lines.append(
        f"- Ours runs with scale = 1/sqrt({LAYER}) (LayerNorm Scaling of layer {LAYER}; its cost does "
        f"not depend on the value); `{HF} × scale` is the unfused way to get the same output."
    )
    for rows, hidden in sizes:
        print(f"benchmarking rows={rows} hidden={hidden} on {device}", file=sys.stderr)
        table = (
            bench_cuda(rows, hidden) if device == "cuda" else bench_cpu(rows, hidden, args.repeats)
        )
        lines += [
            f"\n{rows} rows × {hidden} hidden:\n",
            "| Implementation | Forward | Backward | Full | Peak memory |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in table.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.output.exists():
        args.output.write_text("# Benchmarks\n")
    with args.output.open("a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
