"""CoE vs MoE cost, and our token dispatch vs per-expert Python loops; appends to docs/benchmarks.md.

    python packages/coe-moe/benchmarks/bench_coe.py [--repeats 7] [--output docs/benchmarks.md]

1. Model step: forward+backward of a small CoEForCausalLM (hidden 256, 4 layers, 63 routed + 1
   shared experts of width 176, batch 4 x 256 tokens) as CoE (C=2, K=4), MoE (C=1, K=8) and MoE
   (C=1, K=16): same expert size, same code, only C and K differ. CPU: ratios to MoE K=8 of
   wall-clock medians over interleaved repeats in one process, and the peak RSS above the model and
   inputs (VmHWM, reset after warm-up) of one forward+backward, each config in a fresh process.
   GPU (bf16): tokens/s of forward+backward and `torch.cuda.max_memory_allocated`.
2. Expert dispatch at 64 experts, K=8, forward+backward of the routed experts only: ours
   (`experts_forward`, auto backend) vs the official code's training path (a per-expert loop over
   an nn.ModuleList with boolean masks), transformers' eager experts (a loop over the experts hit)
   and transformers' grouped_mm experts, all on the same weights and routing.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coe_moe import CoEConfig, CoEForCausalLM, experts_forward
from layerwise_core import set_seed
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "benchmarks.md"
MODEL = dict(
    vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
    moe_intermediate_size=176, num_experts=63, num_shared_experts=1, max_position_embeddings=256,
)  # fmt: skip
VARIANTS = {"CoE C=2 K=4": (2, 4), "MoE K=8": (1, 8), "MoE K=16": (1, 16)}
BASELINE = "MoE K=8"
BATCH, SEQ = 4, 256
DISPATCH_SIZES = [(2048, 256, 128), (512, 1024, 704)]  # tokens, hidden, expert width
DISPATCH_EXPERTS, DISPATCH_TOP_K = 64, 8
OURS = "ours (sorted, grouped GEMM)"
REFERENCE = "official code (per-expert mask loop)"


def _model_step(name: str, device: str, dtype: torch.dtype, frozen_experts: bool = False):
    """(forward+backward closure, parameter count) of one variant; seeded, train mode."""
    iterations, top_k = VARIANTS[name]
    set_seed(0)
    model = CoEForCausalLM(CoEConfig(**MODEL, num_iterations=iterations, top_k=top_k))
    model = model.to(device, dtype).train()
    for layer in model.model.layers if frozen_experts else ():
        layer.mlp.experts.requires_grad_(False)
    ids = torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ), device=device)

    def step() -> None:
        model(ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def _medians(fns: dict[str, Callable[[], None]], repeats: int) -> tuple[dict, dict]:
    """(wall-clock, CPU-time) medians in seconds over interleaved repeats after 2 warm-ups.

    On a shared machine the wall clock also counts the time other processes hold the cores; with
    one torch thread, the process CPU time counts only this work.
    """
    cpu: dict[str, list[float]] = {name: [] for name in fns}

    def timed(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            start = time.process_time()
            fn()
            cpu[name].append(time.process_time() - start)

        return run

    wall = interleaved_medians({n: timed(n, f) for n, f in fns.items()}, repeats, warmup=2)
    return wall, {name: statistics.median(samples[2:]) for name, samples in cpu.items()}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_child(name: str, frozen_experts: bool) -> None:
    """In a fresh process: print the peak RSS (bytes) above model + inputs of the first step.

    No warm-up step: memory freed by one would stay in the allocator and hide the next peak. So
    the figure includes the gradient buffers.
    """
    step, _ = _model_step(name, "cpu", torch.float32, frozen_experts)
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM
    step()
    print((_rss_kib("VmHWM") - base) * 1024)


def saved_activation_bytes(name: str, device: str, dtype: torch.dtype) -> int:
    """Bytes of the tensors autograd saves for the backward of one forward (storages counted once)."""
    iterations, top_k = VARIANTS[name]
    set_seed(0)
    model = CoEForCausalLM(CoEConfig(**MODEL, num_iterations=iterations, top_k=top_k))
    model = model.to(device, dtype).train()
    ids = torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ), device=device)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, labels=ids)
    return sum(storages.values())


def bench_model(repeats: int) -> tuple[str, list[str]]:
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    steps, params = {}, {}
    for name in VARIANTS:
        steps[name], params[name] = _model_step(name, device, dtype)
    saved = {name: saved_activation_bytes(name, device, dtype) for name in VARIANTS}
    memory, frozen = {}, {}
    if cuda:
        for name, step in steps.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            memory[name] = torch.cuda.max_memory_allocated() - base
    else:
        for name in VARIANTS:
            for flags, table in (([], memory), (["--frozen-experts"], frozen)):
                cmd = [sys.executable, __file__, "--peak-rss-child", name, *flags]
                cmd += ["--threads", str(torch.get_num_threads())]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                table[name] = int(out.strip().splitlines()[-1])
    wall, cpu = _medians(steps, repeats)
    rows = []
    for name, (iterations, top_k) in VARIANTS.items():
        if cuda:
            speed = [f"{BATCH * SEQ / wall[name]:,.0f} tokens/s"]
        else:
            speed = [f"{cpu[name] / cpu[BASELINE]:.2f}×", f"{wall[name] / wall[BASELINE]:.2f}×"]
        mem = f"{memory[name] / 2**20:.0f} MiB ({memory[name] / memory[BASELINE]:.2f}×)"
        act = f"{saved[name] / 2**20:.0f} MiB ({saved[name] / saved[BASELINE]:.2f}×)"
        calls = iterations * top_k
        rows.append([name, calls, f"{params[name] / 1e6:.1f}M", *speed, act, mem])
        if not cuda:
            rows[-1].append(
                f"{frozen[name] / 2**20:.0f} MiB ({frozen[name] / frozen[BASELINE]:.2f}×)"
            )
    if cuda:
        times = ["Fwd+bwd throughput"]
    else:
        times = [f"Fwd+bwd CPU time vs {BASELINE}", f"Fwd+bwd wall time vs {BASELINE}"]
    header = ["Variant", "Routed expert calls / token", "Params", *times, "Saved activations",
              "Peak memory"]  # fmt: skip
    if not cuda:
        header.append("Peak memory, experts frozen")
    notes = [
        f"CoEForCausalLM hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, "
        f"{MODEL['num_experts']} routed + {MODEL['num_shared_experts']} shared experts of width "
        f"{MODEL['moe_intermediate_size']}, vocab {MODEL['vocab_size']}, batch {BATCH} x {SEQ} "
        f"tokens, {'bf16' if cuda else 'fp32'}, train mode (aux loss on), expert backend auto.",
        "Saved activations: bytes of the tensors autograd keeps for the backward of one forward "
        "(each storage counted once): deterministic.",
        "Peak memory: " + ("`torch.cuda.max_memory_allocated` above the model during one "
                           "forward+backward." if cuda else
                           "peak RSS (VmHWM) above model and inputs during the first "
                           "forward+backward of a fresh process per variant (includes the "
                           "gradient buffers; allocator effects make it noisier, about ±30 MiB "
                           "between runs). 'Experts frozen': the same with the routed expert "
                           "weights excluded from the gradient, which isolates the cost of their "
                           "gradients: a CoE expert gets one weight gradient per iteration, and "
                           "autograd holds them until it has added them."),
        f"Time: medians of {repeats} interleaved repeats after 2 warm-ups, one process"
        + ("." if cuda else "; CPU time = process CPU time (with one torch thread, unaffected by "
           "other processes on a shared machine), wall time = wall clock."),
    ]  # fmt: skip
    return markdown_table(header, rows), notes


class _LinearExpert(nn.Module):
    """One expert as the official code builds it: three nn.Linear (DeepSeek-V2's MLP)."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(gate.shape[1], gate.shape[0], bias=False)
        self.up_proj = nn.Linear(up.shape[1], up.shape[0], bias=False)
        self.down_proj = nn.Linear(down.shape[1], down.shape[0], bias=False)
        with torch.no_grad():
            self.gate_proj.weight.copy_(gate)
            self.up_proj.weight.copy_(up)
            self.down_proj.weight.copy_(down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def reference_loop(x, weights, experts, modules: nn.ModuleList) -> torch.Tensor:
    """The official CoE/DeepSeek-V2 training path: repeat tokens K times, one boolean mask per
    expert, y[mask] = expert(x[mask]), then the weighted sum over each token's K copies."""
    flat = experts.reshape(-1)
    copies = x.repeat_interleave(experts.shape[1], dim=0)
    y = torch.empty_like(copies)
    for i, expert in enumerate(modules):
        y[flat == i] = expert(copies[flat == i])
    return (y.view(*weights.shape, -1) * weights.unsqueeze(-1)).sum(dim=1)


def _dispatch_case(tokens: int, hidden: int, width: int, repeats: int) -> tuple[dict, dict]:
    """(wall, CPU) median fwd+bwd seconds of each implementation on one problem size."""
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeExperts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    num_experts, top_k = DISPATCH_EXPERTS, DISPATCH_TOP_K
    gen = torch.Generator().manual_seed(0)
    gate_up = torch.randn(num_experts, 2 * width, hidden, generator=gen) * hidden**-0.5
    down = torch.randn(num_experts, hidden, width, generator=gen) * width**-0.5
    x = torch.randn(tokens, hidden, generator=gen)
    weights, experts = torch.randn(tokens, num_experts, generator=gen).softmax(-1).topk(top_k)
    dy = torch.randn(tokens, hidden, generator=gen)
    x, weights, experts, dy = (t.to(device) for t in (x, weights, experts, dy))
    x.requires_grad_()
    ours_gate_up, ours_down = nn.Parameter(gate_up.to(device)), nn.Parameter(down.to(device))
    modules = nn.ModuleList(
        _LinearExpert(gate_up[i, :width], gate_up[i, width:], down[i]) for i in range(num_experts)
    ).to(device)
    hf = {}
    for impl in ("eager", "grouped_mm"):
        cfg = Qwen2MoeConfig(
            hidden_size=hidden, moe_intermediate_size=width, num_experts=num_experts,
            num_experts_per_tok=top_k, experts_implementation=impl,
        )  # fmt: skip
        hf[impl] = Qwen2MoeExperts(cfg).to(device)
        with torch.no_grad():
            hf[impl].gate_up_proj.copy_(gate_up)
            hf[impl].down_proj.copy_(down)
    fns = {
        OURS: lambda: experts_forward(x, weights, experts, ours_gate_up, ours_down),
        REFERENCE: lambda: reference_loop(x, weights, experts, modules),
        "transformers eager (loop over experts hit)": lambda: hf["eager"](x, experts, weights),
        "transformers grouped_mm": lambda: hf["grouped_mm"](x, experts, weights),
    }
    want = fns[REFERENCE]()
    for name, fn in fns.items():  # same maths before timing anything
        torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-4, msg=name)
    params = [x, ours_gate_up, ours_down, *modules.parameters()]
    params += [p for module in hf.values() for p in module.parameters()]

    def fwd_bwd(fn):
        def run() -> None:
            fn().backward(dy)
            for p in params:
                p.grad = None

        return run

    return _medians({n: fwd_bwd(f) for n, f in fns.items()}, repeats)


def bench_dispatch(repeats: int) -> tuple[str, list[str]]:
    rows = []
    cuda = torch.cuda.is_available()
    for tokens, hidden, width in DISPATCH_SIZES:
        wall, cpu = _dispatch_case(tokens, hidden, width, repeats)
        for name in wall:
            cells = [f"{wall[name] / wall[OURS]:.2f}×"]
            if not cuda:
                cells.insert(0, f"{cpu[name] / cpu[OURS]:.2f}×")
            rows.append([f"{tokens} × {hidden} → {width}", name, *cells])
    header = ["Tokens × hidden → expert width", "Implementation", "Fwd+bwd time vs ours"]
    if not cuda:
        header[2:] = ["Fwd+bwd CPU time vs ours", "Fwd+bwd wall time vs ours"]
    notes = [
        f"{DISPATCH_EXPERTS} experts, K={DISPATCH_TOP_K}, fp32, forward+backward of the routed "
        "experts only (same weights and routing for all; outputs checked equal before timing); "
        f"medians of {repeats} interleaved repeats after 2 warm-ups, one process (CPU and wall "
        "time as above). Ours uses the auto backend (torch's grouped GEMM on CPU).",
    ]
    return markdown_table(header, rows), notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="medians over this many (>= 5)")
    parser.add_argument("--output", type=Path, default=DOCS, help="markdown file to append to")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 on a shared machine: see the notes)"
    )
    parser.add_argument("--peak-rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--frozen-experts", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_rss_child:
        peak_rss_child(args.peak_rss_child, args.frozen_experts)
        return
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    command = shlex.join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    print("model step ...", file=sys.stderr)
    model_table, model_notes = bench_model(args.repeats)
    print("dispatch ...", file=sys.stderr)
    dispatch_table, dispatch_notes = bench_dispatch(args.repeats)
    body = "\n".join(
        [
            "CoE (C=2, K=4) vs MoE (K=8, K=16), same expert size:",
            "",
            *[f"- {n}" for n in model_notes],
            "",
            model_table,
            "",
            "Routed-expert dispatch at 64 experts:",
            "",
            *[f"- {n}" for n in dispatch_notes],
            "",
            dispatch_table,
        ]
    )
    text = append_section(args.output, "coe-moe: CoE vs MoE, and expert dispatch", command, body)
    print(text)


if __name__ == "__main__":
    main()
