"""alpha of every Linear matrix of llama-130m / llama-1b shaped models: ours (shape-batched Gram +
eigvalsh, `weight_alphas`) vs one `torch.linalg.svdvals` per matrix, both float32, same Hill fit.
Issue target: >= 2x faster on CPU with alphas within 1e-4.

    python packages/spectral-opt/benchmarks/bench_alphas.py [--repeats 5] [--layers-1b 1]

Random N(0, 0.02) weights of the papers' shapes (no model is built). On CPU the llama-1b shapes are
measured on `--layers-1b` decoder layers plus lm_head (every layer has the same 7 shapes; seven
24-layer SVD passes are too slow there), with `--threads 1` by default: on the shared 2-core dev machines two threads fighting other
jobs make LAPACK several times slower.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from layerwise_core import LLAMA_PRESETS
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table
from spectral_opt import hill_alpha, weight_alphas

ROOT = Path(__file__).resolve().parents[3]


def llama_linear_shapes(preset: str, layers: int | None, vocab: int = 32000) -> dict:
    """(out, in) of every nn.Linear of a Llama preset, in named_modules order."""
    p = LLAMA_PRESETS[preset]
    d, ffn = p.hidden_size, p.intermediate_size
    shapes = {}
    for i in range(p.num_hidden_layers if layers is None else layers):
        for proj in ("q", "k", "v", "o"):
            shapes[f"model.layers.{i}.self_attn.{proj}_proj"] = (d, d)
        shapes[f"model.layers.{i}.mlp.gate_proj"] = (ffn, d)
        shapes[f"model.layers.{i}.mlp.up_proj"] = (ffn, d)
        shapes[f"model.layers.{i}.mlp.down_proj"] = (d, ffn)
    shapes["lm_head"] = (vocab, d)
    return shapes


def svdvals_alphas(weights: dict) -> dict:
    """The baseline: one float32 SVD per matrix, eigenvalues = sigma^2, the same median fit."""
    return {
        k: hill_alpha(torch.linalg.svdvals(w.float()).pow(2)).item() for k, w in weights.items()
    }


def measure(preset: str, layers: int | None, device: str, repeats: int) -> tuple[list, float]:
    g = torch.Generator(device=device).manual_seed(0)
    weights = {
        name: torch.empty(shape, device=device).normal_(0.0, 0.02, generator=g)
        for name, shape in llama_linear_shapes(preset, layers).items()
    }
    ours, base = weight_alphas(weights), svdvals_alphas(weights)
    error = max(abs(ours[k] - base[k]) for k in weights)
    times = interleaved_medians(
        {"ours": lambda: weight_alphas(weights), "svdvals": lambda: svdvals_alphas(weights)},
        repeats=repeats,
        warmup=1,
    )
    what = f"{preset} ({len(weights)} matrices" + (
        f": {layers} of {LLAMA_PRESETS[preset].num_hidden_layers} layers + lm_head)"
        if layers is not None
        else ", all layers + lm_head)"
    )
    ratio = times["svdvals"] / times["ours"]
    row = [what, f"{ratio:.2f}x", f"{error:.1e}"]
    if device == "cuda":
        row += [f"{times['ours'] * 1e3:.0f} ms", f"{times['svdvals'] * 1e3:.0f} ms"]
    return row, ratio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers-1b", type=int, default=1, help="CPU: llama-1b layers measured")
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch intra-op threads")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    rows = []
    layers_1b = None if device == "cuda" else args.layers_1b
    for preset, layers in (("llama-130m", None), ("llama-1b", layers_1b)):
        row, _ = measure(preset, layers, device, args.repeats)
        print(row, flush=True)
        rows.append(row)
    header = ["Matrices (float32)", "svdvals time / ours", "max abs alpha difference"]
    if device == "cuda":
        header += ["ours", "svdvals"]
    text = append_section(
        args.out,
        "spectral-opt: alpha of every matrix, batched Gram + eigvalsh vs svdvals per matrix",
        "python packages/spectral-opt/benchmarks/bench_alphas.py"
        + ("" if device == "cuda" else f" --layers-1b {args.layers_1b} --threads {args.threads}"),
        markdown_table(header, rows),
        [
            "Random N(0, 0.02) weights of the presets' Linear shapes (vocab 32000); ours = "
            "`spectral_opt.weight_alphas` (matrices grouped by shape, Gram on the smaller side, "
            "batched eigvalsh, vectorised median Hill fit); baseline = one `torch.linalg.svdvals` "
            "per matrix, sigma^2, the same Hill fit. Both float32.",
            f"Medians of {args.repeats} interleaved repeats after 1 warm-up, in one process; "
            "ratio > 1: ours is faster. Alpha difference: max over matrices of |ours - baseline|.",
        ],
    )
    print(text)


if __name__ == "__main__":
    main()
