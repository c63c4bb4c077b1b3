"""`report(model, tokenizer, texts, out_dir)`: one forward of all single-pass metrics, optional
removal sweeps, written as depth_probe.json + depth_probe.md + PNG figures."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from depth_probe.probe import DepthProbe, probe
from depth_probe.skip_effect import SkipEffect, skip_effect
from depth_probe.sweeps import (
    SweepResult,
    lowest_influence_sweep,
    single_layer_sweep,
    sweep,
)
from layerwise_core import pad_token_rows

__all__ = ["DepthReport", "encode_texts", "report", "write_report"]


@dataclass
class DepthReport:
    probe: DepthProbe
    sweeps: list[SweepResult]
    out_dir: Path
    files: list[Path] = field(default_factory=list)


def encode_texts(
    tokenizer, texts: Sequence[str], max_length: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [batch, seq] ids and attention mask; each text truncated to `max_length`."""
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"][:max_length] for t in texts]
    rows = [r for r in rows if r]
    if not rows:
        raise ValueError("encode_texts: every text is empty after tokenization")
    pad = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if v is not None), 0)
    return pad_token_rows(rows, pad)


def _json_ready(value):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _default_ns(num_layers: int) -> list[int]:
    ns, n = [], 1
    while n <= num_layers // 2:
        ns.append(n)
        n *= 2
    return ns


def _markdown(
    result: DepthProbe,
    sweeps: list[SweepResult],
    figures: list[Path],
    title: str,
    model: nn.Module,
    command: str | None,
    skip: SkipEffect | None = None,
) -> str:
    num = result.num_layers
    lines = [f"# {title}", ""]
    params = sum(p.numel() for p in model.parameters())
    lines += [
        f"- Model: `{type(model).__name__}`, {num} blocks, {params / 1e6:.1f}M parameters",
        f"- Tokens analysed: {result.num_tokens} (one forward pass for every single-pass metric)",
    ]
    if command:
        lines.append(f"- Command: `{command}`")
    lines.append("")

    bi = result.block_influence
    order = torch.argsort(bi).tolist()
    lens = result.logit_lens
    lines += ["## Summary", ""]
    lines.append(
        f"- Lowest block influence: layers {order[: max(1, num // 4)]}; highest: {order[::-1][:3]}."
    )
    best = result.angular_distance.best_blocks()
    half = max(1, num // 4)
    start, dist = best[half]
    lines.append(
        f"- Most prunable contiguous block of {half} layers (angular distance): "
        f"{start}..{start + half - 1} (d = {dist:.3f})."
    )
    if lens is not None:
        agree = lens.top1_agreement.tolist()
        first = next((i for i, a in enumerate(agree) if a >= 0.5), None)
        lines.append(
            f"- Logit lens: the top-1 token of h_l matches the model's output for >= 50% of tokens "
            f"from h_{first} on (of h_0..h_{num})."
            if first is not None
            else "- Logit lens: no intermediate layer reaches 50% top-1 agreement."
        )
    massive = result.massive_activations
    residual = result.massive_residual
    peak = int(torch.argmax(massive.max_median_ratio))
    jump = int(torch.argmax(residual.max_abs))
    lines.append(
        f"- Massive activations: at the attention inputs the max/median ratio peaks at layer "
        f"{peak} ({massive.max_median_ratio[peak]:.1f}), outlier channels "
        f"{massive.outlier_channels(min(3, massive.top_k))}; in the residual stream the largest "
        f"|h| is {residual.max_abs[jump]:.3g} (entering layer {jump}), outlier channels "
        f"{residual.outlier_channels(min(3, residual.top_k))}."
    )
    lines.append("")

    lines += ["## Per layer", ""]
    header = [
        "layer",
        "BI",
        "ang. dist (n=1)",
        "attn ratio",
        "mlp ratio",
        "block cos",
        "output var",
        "max/median (attn in)",
        "top channel",
        "max abs h (residual)",
    ]
    if lens is not None:
        header += ["lens KL (h_l+1)", "lens top-1 agr. (h_l+1)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    rc = result.residual_contributions
    top = massive.top_channels
    for layer in range(num):
        row = [
            str(layer),
            _fmt(bi[layer].item()),
            _fmt(result.angular_distance.matrix[0, layer].item()),
            _fmt(rc.attn_ratio[layer].item()),
            _fmt(rc.mlp_ratio[layer].item()),
            _fmt(rc.block_cos[layer].item()),
            _fmt(result.output_variance[layer].item()),
            _fmt(massive.max_median_ratio[layer].item()),
            str(int(top[layer, 0])),
            _fmt(result.massive_residual.max_abs[layer].item()),
        ]
        if lens is not None:
            row += [_fmt(lens.kl[layer + 1].item()), _fmt(lens.top1_agreement[layer + 1].item())]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    lines += [
        "## Best contiguous block per size (angular distance, Gromov et al.)",
        "",
        "| n | layers | d(h_l, h_l+n) |",
        "|---|---|---|",
    ]
    for n, (start, dist) in best.items():
        lines.append(f"| {n} | {start}..{start + n - 1} | {dist:.3f} |")
    lines.append("")

    if skip is not None:
        lines += [
            f"## Skip effect (Csordas et al.; block skipped for tokens before t = {skip.positions})",
            "",
            "| skipped layer | max relative change of later contributions | max change of output "
            "probabilities |",
            "|---|---|---|",
        ]
        for layer in range(skip.output_change.numel()):
            later = skip.relative_change[layer, layer + 1 :]
            peak = later.max().item() if later.numel() else 0.0
            lines.append(f"| {layer} | {peak:.3g} | {skip.output_change[layer].item():.3g} |")
        lines.append("")

    for result_sweep in sweeps:
        lines += [f"## Removal sweep: {result_sweep.kind}", "", result_sweep.table(), ""]

    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({p.name})" for p in figures]
        lines.append("")
    return "\n".join(lines)


def report(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    max_length: int = 256,
    scorers: Mapping | Sequence | None = None,
    sweeps: Sequence[SweepResult] = (),
    zero_channels: Sequence[int] | Literal["auto"] | None = "auto",
    title: str = "Depth report",
    command: str | None = None,
    figures: bool = True,
    with_skip_effect: bool = False,
) -> DepthReport:
    """Analyse how `model` uses its depth on `texts` and write the report into `out_dir`.

    Single-pass metrics (block influence, angular distance, residual contributions, output variance,
    logit lens, CKA, similarity matrices, massive activations) come from one forward over `texts`
    (each truncated to `max_length` tokens). With `scorers` (e.g. a `PerplexityScorer` and an
    `ExactMatchScorer`) it also runs a single-layer removal sweep, a lowest-Block-Influence sweep
    and a best-angular-block sweep for n = 1, 2, 4, ... L/2. Precomputed `sweeps` are included as
    they are. `with_skip_effect` adds Csordas et al.'s skip effect on the first two texts (L + 1
    more forwards). Figures need matplotlib (the `plot` extra); without it the report has none.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids, mask = encode_texts(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    model.eval()
    result = probe(model, ids.to(device), mask.to(device), zero_channels=zero_channels)
    all_sweeps = list(sweeps)
    if scorers:
        ns = _default_ns(result.num_layers)
        all_sweeps.append(single_layer_sweep(model, scorers))
        all_sweeps.append(lowest_influence_sweep(model, scorers, result.block_influence, ns))
        blocks = result.angular_distance.best_blocks()
        removals = [tuple(range(blocks[n][0], blocks[n][0] + n)) for n in ns]
        all_sweeps.append(sweep(model, scorers, removals, kind="angular_best_block"))

    skip = None
    if with_skip_effect:
        shortest = int(mask[:2].sum(-1).min())
        skip = skip_effect(model, ids[:2, :shortest].to(device), positions=[shortest // 2])
    return write_report(
        result,
        all_sweeps,
        out,
        model=model,
        title=title,
        command=command,
        figures=figures,
        skip_effect=skip,
    )


def write_report(
    result: DepthProbe,
    sweeps: Sequence[SweepResult],
    out_dir: str | Path,
    *,
    model: nn.Module,
    title: str = "Depth report",
    command: str | None = None,
    figures: bool = True,
    skip_effect: SkipEffect | None = None,
) -> DepthReport:
    """Write depth_probe.json, depth_probe.md and the PNG figures of a `probe()` result and of
    removal sweeps into `out_dir` (figures need matplotlib; without it there are none)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_sweeps = list(sweeps)
    paths: list[Path] = []
    if figures:
        try:
            from depth_probe.figures import plot_probe, plot_sweeps

            paths = plot_probe(result, out, title=title, skip_effect=skip_effect)
            paths += plot_sweeps(all_sweeps, out)
        except ImportError:
            paths = []
    payload = {
        "title": title,
        "model": type(model).__name__,
        "command": command,
        "probe": result.as_dict(),
        "sweeps": [s.as_dict() for s in all_sweeps],
        "skip_effect": None if skip_effect is None else skip_effect.as_dict(),
    }
    json_path = out / "depth_probe.json"
    json_path.write_text(json.dumps(_json_ready(payload), indent=1, allow_nan=False))
    md_path = out / "depth_probe.md"
    md_path.write_text(_markdown(result, all_sweeps, paths, title, model, command, skip_effect))
    return DepthReport(
        probe=result, sweeps=all_sweeps, out_dir=out, files=[json_path, md_path, *paths]
    )
