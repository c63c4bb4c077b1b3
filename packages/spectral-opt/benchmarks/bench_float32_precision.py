"""float32 alphas vs float64 alphas, and their cost, before and after issue 21 item 1.

    python packages/spectral-opt/benchmarks/bench_float32_precision.py [--repeats 5] [--threads 1]

`module_alphas` of an initialised llama-60m (`LlamaForCausalLM(llama_config("llama-60m"))`, seed 0,
57 Linear matrices, vocab 32000) and of the same model with heavy-tailed weights (Student-t, 2.5
degrees of freedom, x 0.02), for every fit. "before" is the plain float32 Gram route
(`accurate_from >= N`: the code before the fix, bit for bit); "after" the default, which recomputes
in float64 the matrices whose float32 Gram cannot resolve the eigenvalues the fit reads; "float64"
is `dtype=torch.float64` everywhere, the reference of the alpha differences.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

from layerwise_core import llama_config
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from spectral_opt import module_alphas

ROOT = Path(__file__).resolve().parents[3]
FITS = ("median", "goodness_of_fit", "fix_finger")


@contextlib.contextmanager
def plain_float32():
    """The code before the fix: the float32 Gram spectrum, never recomputed in float64."""
    module = sys.modules["spectral_opt.module_alphas"]  # the package exports a same-named function
    original = module.esd_float64
    module.esd_float64 = lambda stack, dtype, accurate_from: original(stack, dtype, 1 << 62)
    try:
        yield
    finally:
        module.esd_float64 = original


def before(model, fit):
    with plain_float32():
        return module_alphas(model, fit=fit)


def models() -> dict:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    init = LlamaForCausalLM(llama_config("llama-60m")).eval()
    torch.manual_seed(1)
    heavy = LlamaForCausalLM(llama_config("llama-60m")).eval()
    t = torch.distributions.StudentT(2.5)
    with torch.no_grad():
        for module in heavy.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(0.02 * t.sample(module.weight.shape))
    return {"initialised": init, "heavy-tailed (Student-t 2.5)": heavy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for label, model in models().items():
        for fit in FITS:
            ref = module_alphas(model, fit=fit, dtype=torch.float64)
            old, new = before(model, fit), module_alphas(model, fit=fit)
            err_old = {k: abs(old[k] - ref[k]) for k in ref}
            err_new = {k: abs(new[k] - ref[k]) for k in ref}
            times = interleaved_medians(
                {
                    "before": lambda m=model, f=fit: before(m, f),
                    "after": lambda m=model, f=fit: module_alphas(m, fit=f),
                    "float64": lambda m=model, f=fit: module_alphas(m, fit=f, dtype=torch.float64),
                },
                repeats=args.repeats,
                warmup=1,
            )
            row = [
                label,
                fit,
                f"{max(err_old.values()):.2g} ({sum(e > 1e-3 for e in err_old.values())})",
                f"{max(err_new.values()):.2g} ({sum(e > 1e-3 for e in err_new.values())})",
                f"{times['before']:.2f} s",
                f"{times['after'] / times['before']:.2f}x",
                f"{times['float64'] / times['before']:.2f}x",
            ]
            print(row, flush=True)
            rows.append(row)
    header = [
        "llama-60m weights (57 matrices)",
        "fit",
        "max abs alpha32 - alpha64 before (matrices > 1e-3)",
        "after",
        "time before",
        "time after / before",
        "float64 everywhere / before",
    ]
    text = append_section(
        args.out,
        "spectral-opt: float32 alphas vs float64 per fit, before / after the float64 recompute "
        "(issue 21)",
        f"python packages/spectral-opt/benchmarks/bench_float32_precision.py --repeats "
        f"{args.repeats} --threads {args.threads}",
        markdown_table(header, rows),
        [
            "`module_alphas(model, fit=...)` of `LlamaForCausalLM(llama_config('llama-60m'))` "
            "(seed 0) and of the same shapes with Student-t (2.5 d.o.f.) x 0.02 weights (seed 1). "
            "before = plain float32 Gram + eigvalsh (the code before the fix); after = the default "
            "(float64 recompute of matrices whose float32 Gram cannot resolve the eigenvalues the "
            "fit reads: below N lambda_max / 2^20); alpha64 = `dtype=torch.float64`.",
            f"Medians of {args.repeats} interleaved repeats after 1 warm-up, one process, "
            f"{args.threads} torch thread(s); ratios < 1: faster than before.",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()
