"""Optimizer step time of SPAM and Stable-SPAM on the parameters of a 9M and a 130M LLaMA.

    python packages/spam-opt/benchmarks/bench_optimizers.py [--repeats 7] [--models 9m 130m]
        [--threads N] [--no-write]

Compares ours (the default path: foreach on CPU, fused Triton on CUDA) with torch.optim.AdamW
(foreach=True; fused=True on CUDA) and with a per-parameter loop that does what the official code
does (written here from the spec and the papers' Algorithm 1; checked bit-for-bit against our
`reference_quirks=True` single-tensor path before timing). The models are built on the meta device
and every parameter gets a real random tensor and a random gradient: only the optimizer step runs.

CPU: ratios of medians of interleaved repeats after a warm-up, in one process. CUDA:
`triton.testing.do_bench` medians in ms. Appends a dated section to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from layerwise_core import llama_config
from spam_opt import SPAMConfig, StableSPAMConfig, spam_warmup_scale, stable_spam_scale

ROOT = Path(__file__).resolve().parents[3]
MODELS = {
    # GaLore's llama_9m: hidden 128, 4 layers, ffn 352 (the SPAM / Stable-SPAM repos' smallest config)
    "9m": dict(
        name="llama-tiny",
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=352,
    ),
    "130m": dict(name="llama-130m"),
}


# ---------------------------------------------------------------------------------------------
# The official per-parameter loops, written from the spec (specs/spam-opt.md): one parameter at a
# time, boolean-mask indexing for the clipping, fresh zero tensors at a reset, Python-side counters.
# Their hyper-parameters come from our configs (`port_arguments`): no defaults of their own.
# ---------------------------------------------------------------------------------------------
class OfficialSPAMLoop:
    def __init__(self, params, *, lr, betas, eps, warmup_steps, threshold, reset_interval,
                 clip_delay):  # fmt: skip
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.N, self.theta, self.dT, self.A = warmup_steps, threshold, reset_interval, clip_delay
        self.state = {p: {} for p in self.params}
        self.t, self.k = 0, warmup_steps + 1

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        s = spam_warmup_scale(self.k, self.N)
        c = self.t + 1
        for p in self.params:
            grad, st = p.grad, self.state[p]
            if "m" not in st:
                st["n"], st["m"], st["v"] = 0, torch.zeros_like(grad), torch.zeros_like(grad)
            if c % self.dT == 0:
                st["m"], st["v"] = torch.zeros_like(grad), torch.zeros_like(grad)
            m, v = st["m"], st["v"]
            st["n"] += 1
            if self.theta != 0 and c >= self.A and c % self.dT >= self.A:
                spike = grad**2 > self.theta * v
                grad[spike] = grad[spike].sign() * torch.sqrt(v[spike] * self.theta)
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = v.sqrt().add_(self.eps)
            step_size = self.lr * (math.sqrt(1 - b2 ** st["n"]) / (1 - b1 ** st["n"]))
            p.add_(m / denom, alpha=-step_size * s)
        self.t, self.k = self.t + 1, self.k + 1
        if (self.t + 1) % self.dT == 0:
            self.k = 0


class OfficialStableSPAMLoop:
    def __init__(self, params, *, lr, betas, eps, weight_decay, gamma1, gamma2, gamma3, total_steps,
                 eta_min, reset_interval):  # fmt: skip
        self.params, self.lr, self.betas, self.eps, self.wd = (
            list(params),
            lr,
            betas,
            eps,
            weight_decay,
        )
        self.g1, self.g2, self.g3 = gamma1, gamma2, gamma3
        self.total, self.eta_min, self.dT = total_steps, eta_min, reset_interval
        self.state = {p: {} for p in self.params}
        self.T = 0

    @torch.no_grad()
    def step(self):
        self.T += 1
        s = stable_spam_scale(self.T, self.total, self.eta_min, clamp=False)
        for p in self.params:
            p.mul_(1 - self.lr * self.wd)  # also when weight_decay = 0
            grad, st = p.grad, self.state[p]
            if "m" not in st:
                st.update(n=0, m=torch.zeros_like(grad), v=torch.zeros_like(grad))
                st.update(M=0, mu=0, V=0)
            m, v = st["m"], st["v"]
            gmax = torch.max(grad.abs())
            st["n"] += 1
            st["M"] = self.g3 * st["M"] + (1 - self.g3) * gmax
            max_hat = st["M"] / (1 - self.g3 ** st["n"])
            spike = grad.abs() > max_hat
            if spike.sum() > 0:
                grad[spike] = grad[spike] / gmax * max_hat
            nu = torch.norm(grad)
            b = self.g1 * s
            st["mu"] = b * st["mu"] + (1 - b) * nu
            st["V"] = self.g2 * st["V"] + (1 - self.g2) * nu**2
            target = (st["mu"] / (1 - b ** st["n"])) / (
                torch.sqrt(st["V"] / (1 - self.g2 ** st["n"])) + self.eps
            )
            if nu > 0:
                grad = grad / nu * target
            if self.dT and self.T % self.dT == 0:
                st.update(m=torch.zeros_like(grad), v=torch.zeros_like(grad), n=1)
            b1, b2 = self.betas[0] * s, self.betas[1]
            bc1, bc2 = 1 - b1 ** st["n"], 1 - b2 ** st["n"]
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.add_(m / denom, alpha=-self.lr / bc1)


def port_arguments(port_cls, config) -> dict:
    """The hyper-parameters a port takes, from our config (the same names)."""
    names = [n for n in inspect.signature(port_cls).parameters if n != "params"]
    return {n: getattr(config, n) for n in names}


def check_ports_against_reference_quirks() -> None:
    """The ports above and our reference_quirks=True single-tensor path agree bit for bit."""
    quirks = dict(lr=1e-2, reference_quirks=True, foreach=False)
    pairs = [
        (
            OfficialSPAMLoop,
            SPAMConfig(clip_delay=2, threshold=50.0, reset_interval=4, warmup_steps=2, **quirks),
        ),
        (OfficialStableSPAMLoop, StableSPAMConfig(reset_interval=4, total_steps=5, **quirks)),
    ]
    for port_cls, config in pairs:
        gen = torch.Generator().manual_seed(0)
        values = [torch.randn(s, generator=gen) for s in [(5, 7), (9,)]]
        a = [torch.nn.Parameter(x.clone()) for x in values]
        b = [torch.nn.Parameter(x.clone()) for x in values]
        port = port_cls(a, **port_arguments(port_cls, config))
        ours = config.build(b)
        for step in range(12):
            for x, y in zip(a, b):
                g = torch.randn(x.shape, generator=gen) * (100.0 if step % 5 == 3 else 1.0)
                x.grad, y.grad = g.clone(), g.clone()
            port.step()
            ours.step()
        assert all(torch.equal(x, y) for x, y in zip(a, b)), port_cls.__name__


# ---------------------------------------------------------------------------------------------


def model_parameters(key: str, device: str) -> list[torch.nn.Parameter]:
    """Real random tensors (and gradients) in the shapes of a LLaMA's parameters."""
    from transformers import LlamaForCausalLM

    spec = dict(MODELS[key])
    config = llama_config(spec.pop("name"), **spec)
    with torch.device("meta"):
        shapes = [p.shape for p in LlamaForCausalLM(config).parameters()]
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, device=device) * 0.02)
        p.grad = torch.randn(shape, generator=gen, device=device) * 1e-3
        params.append(p)
    return params


def build_optimizers(params, device: str) -> dict[str, object]:
    # Identical hyperparameters: the papers' defaults, no weight decay. clip_delay=2 puts SPAM's
    # spike test in every timed step after the two warm-up steps (in a real run it is on in all but
    # 20 of every 500 steps).
    on_cuda = device == "cuda"
    adamw_kw = dict(fused=True) if on_cuda else dict(foreach=True)
    spam, stable = SPAMConfig(clip_delay=2), StableSPAMConfig(total_steps=20000)
    return {
        "torch AdamW": torch.optim.AdamW(params, lr=spam.lr, weight_decay=0.0, **adamw_kw),
        "SPAM (ours)": spam.build(params),
        "SPAM official loop": OfficialSPAMLoop(params, **port_arguments(OfficialSPAMLoop, spam)),
        "Stable-SPAM (ours)": stable.build(params),
        "Stable-SPAM official loop": OfficialStableSPAMLoop(
            params, **port_arguments(OfficialStableSPAMLoop, stable)
        ),
    }


def time_cpu(optimizers: dict, repeats: int) -> dict[str, float]:
    for opt in optimizers.values():  # warm-up: lazy state, then SPAM's first clipped step
        opt.step()
        opt.step()
    samples: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, opt in optimizers.items():  # interleaved, so that drifts hit every optimizer
            start = time.perf_counter()
            opt.step()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in samples.items()}


def time_cuda(optimizers: dict, repeats: int) -> dict[str, float]:
    import triton.testing

    for opt in optimizers.values():
        opt.step()
        opt.step()
    return {
        name: triton.testing.do_bench(opt.step, warmup=5, rep=max(50, 20 * repeats))
        for name, opt in optimizers.items()
    }


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} torch threads"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check_ports_against_reference_quirks()

    results: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for key in args.models:
        params = model_parameters(key, device)
        counts[key] = sum(p.numel() for p in params)
        optimizers = build_optimizers(params, device)
        timer = time_cuda if device == "cuda" else time_cpu
        results[key] = timer(optimizers, args.repeats)
        del optimizers, params
        print(key, {k: f"{v:.4g}" for k, v in results[key].items()}, flush=True)

    lines = report(results, counts, device, args)
    print("\n".join(lines))
    if not args.no_write:
        with open(ROOT / "docs" / "benchmarks.md", "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


def report(results, counts, device, args) -> list[str]:
    today = datetime.date.today().isoformat()
    kind = "GPU" if device == "cuda" else "CPU"
    models = list(results)
    header = " | ".join(f"{m.upper()} ({counts[m] / 1e6:.1f}M params)" for m in models)
    baseline = "torch AdamW"
    lines = [
        f"## spam-opt: SPAM / Stable-SPAM optimizer step ({kind}, {today})",
        "",
        f"- Machine: {machine()}",
        f"- torch {torch.__version__}, Python {sys.version.split()[0]}",
        "- Command: `python packages/spam-opt/benchmarks/bench_optimizers.py"
        + (f" --repeats {args.repeats}" if args.repeats != 7 else "")
        + (f" --threads {args.threads}" if args.threads else "")
        + "` (from the repository root)",
        "- One optimizer step over every parameter of the model (random fp32 tensors and gradients in "
        "the shapes of `LlamaForCausalLM(llama_config(...))`, vocab 32000); papers' default "
        "hyperparameters, weight decay 0, SPAM's spike test on in every timed step.",
    ]
    if device == "cuda":
        lines.append(
            "- `triton.testing.do_bench` medians; ours = the fused Triton step, "
            "baseline `torch.optim.AdamW(fused=True)`."
        )
    else:
        lines.append(
            f"- Ratios of medians of {args.repeats} interleaved repeats after two warm-up steps, one "
            "process (lower is better); ours = the default foreach path, baseline "
            "`torch.optim.AdamW(foreach=True)`. Official loop = a per-parameter port of the official "
            "code, checked bit-for-bit against `reference_quirks=True` before timing."
        )
    lines += ["", f"| Optimizer | {header} |", "|---|" + "---|" * len(models)]
    for name in results[models[0]]:
        cells = []
        for m in models:
            ratio = results[m][name] / results[m][baseline]
            cell = f"{ratio:.2f}x"
            if device == "cuda":
                cell += f" ({results[m][name]:.2f} ms)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Speed-up of ours over the official loop:", ""]
    for ours, official in (
        ("SPAM (ours)", "SPAM official loop"),
        ("Stable-SPAM (ours)", "Stable-SPAM official loop"),
    ):
        speedups = ", ".join(
            f"{m.upper()} {results[m][official] / results[m][ours]:.1f}x" for m in models
        )
        lines.append(f"- {ours.split(' ')[0]}: {speedups}")
    return lines


if __name__ == "__main__":
    main()
