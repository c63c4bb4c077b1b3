"""`prune(model, ...)`: magnitude, Wanda or SparseGPT pruning of every Linear in the decoder blocks,
with a per-layer sparsity allocation (uniform, OWL, deeper/earlier-is-sparser) or N:M patterns.

Calibrated methods run sequentially, block by block (`sparse_ft.calibration`): each block is pruned
on the inputs produced by the already-pruned blocks before it, as the reference implementations do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from layerwise_core import find_decoder
from sparse_ft.calibration import (
    BlockInputs,
    block_linears,
    calibration_batches,
    capture_block_inputs,
    linear_inputs,
    run_block,
)
from sparse_ft.magnitude import magnitude_prune_mask
from sparse_ft.nm_sparsity import parse_nm
from sparse_ft.owl import owl_outlier_ratio, owl_sparsities
from sparse_ft.sparsegpt import HessianStatistics, sparsegpt_prune
from sparse_ft.sparsity_allocation import ALLOCATIONS, Allocation, layer_sparsities
from sparse_ft.wanda import InputNormStatistics, wanda_prune_mask, wanda_scores

__all__ = ["METHODS", "PruneResult", "prune"]

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass
class PruneResult:
    """What `prune` did. Module names are full names in the model (`model.layers.0.self_attn.q_proj`)."""

    masks: dict[str, torch.Tensor]  # True where the weight was KEPT
    targets: dict[str, float]  # sparsity each matrix was pruned to
    layer_sparsity: list[float]  # target per decoder block (mean of its matrices' targets)
    outlier_ratios: dict[str, float] = field(default_factory=dict)  # OWL's D, per block or matrix

    @property
    def sparsity(self) -> dict[str, float]:
        """Fraction of zeroed entries of each matrix."""
        return {name: 1.0 - mask.float().mean().item() for name, mask in self.masks.items()}

    @property
    def overall_sparsity(self) -> float:
        zeroed = sum(int((~m).sum()) for m in self.masks.values())
        return zeroed / max(1, sum(m.numel() for m in self.masks.values()))


def _check_arguments(method, sparsity, pattern, allocation, calibration) -> tuple[int, int] | None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    nm = parse_nm(pattern) if pattern is not None else None
    if nm is not None:
        if sparsity is not None and not math.isclose(sparsity, nm[0] / nm[1]):
            raise ValueError(
                f"pattern {pattern!r} zeroes {nm[0] / nm[1]:.0%} of every row, not sparsity="
                f"{sparsity}: pass sparsity=None (or {nm[0] / nm[1]})"
            )
        if allocation != "uniform":
            raise ValueError(
                f"an N:M pattern fixes the sparsity of every layer: allocation={allocation!r} needs "
                "pattern=None (unstructured)"
            )
    elif sparsity is None or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) for unstructured pruning, got {sparsity}")
    if calibration is None and (method != "magnitude" or allocation == "owl"):
        raise ValueError(
            f"method={method!r} with allocation={allocation!r} needs calibration data: pass "
            "calibration=token ids [sequences, tokens] (e.g. 128 x 2048 tokens of C4 in the papers)"
        )
    return nm


def _sequential_groups(
    block: nn.Module, linears: dict[str, nn.Linear], inputs: BlockInputs
) -> list[list[str]]:
    """Linears grouped by shared input tensor, in call order: [q, k, v], [o], [gate, up], [down]."""
    order: list[tuple[str, int]] = []
    alive: list[torch.Tensor] = []  # hold the inputs so that no address is reused during the run

    def record(name: str, x: torch.Tensor) -> None:
        alive.append(x)
        order.append((name, x.data_ptr()))

    first = BlockInputs(inputs.hidden[:1], inputs.args[:1], inputs.kwargs[:1])
    with linear_inputs(linears, record):
        run_block(block, first)
    groups: dict[int, list[str]] = {}
    for name, ptr in order:
        if name not in groups.setdefault(ptr, []):
            groups[ptr].append(name)
    seen = [n for g in groups.values() for n in g]
    missing = [n for n in linears if n not in seen]
    return [*groups.values(), *([missing] if missing else [])]


def _owl_ratios(
    blocks: Sequence[nn.Module],
    linears: list[dict[str, nn.Linear]],
    inputs: BlockInputs,
    threshold: float,
    per_matrix: bool,
) -> list[list[float]]:
    """Outlier ratios D of each block (one value) or of each matrix, from the DENSE model's inputs."""
    ratios: list[list[float]] = []
    for block, mods in zip(blocks, linears):
        stats = {n: InputNormStatistics(m.in_features, m.weight.device) for n, m in mods.items()}
        with linear_inputs(mods, lambda n, x, stats=stats: stats[n].add_batch(x)):
            outputs = run_block(block, inputs)
        scores = [wanda_scores(m.weight, stats[n].scaler_row) for n, m in mods.items()]
        if per_matrix:
            ratios.append([owl_outlier_ratio(s, threshold) for s in scores])
        else:
            ratios.append([owl_outlier_ratio(scores, threshold)])
        inputs = BlockInputs(outputs, inputs.args, inputs.kwargs)
    return ratios


@torch.no_grad()
def prune(
    model: nn.Module,
    method: Literal["magnitude", "wanda", "sparsegpt"] = "wanda",
    sparsity: float | None = 0.5,
    *,
    pattern: str | None = None,
    allocation: Allocation = "uniform",
    calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
    batch_size: int = 8,
    epsilon: float = 0.08,
    owl_lambda: float = 0.08,
    owl_threshold: float = 5.0,
    owl_granularity: Literal["block", "matrix"] = "block",
    true_sequential: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    reference_quirks: bool = False,
) -> PruneResult:
    """Prune every nn.Linear of the decoder blocks in place and return the masks.

    Args:
        model: a decoder-only LM that `layerwise_core.find_decoder` understands.
        method: "magnitude" (|W| per matrix), "wanda" (|W| * ||X_j|| per row), "sparsegpt" (OBS
            reconstruction per 128-column block).
        sparsity: target fraction of zeros (average over blocks); None with an N:M `pattern`.
        pattern: "2:4", "4:8", ... (N zeros in every M consecutive inputs of a row), or None.
        allocation: "uniform", "owl", "deeper_sparser", "earlier_sparser" (`sparsity_allocation`).
        calibration: token ids [sequences, tokens] (or a list of them) for Wanda, SparseGPT and OWL.
        batch_size: calibration sequences per forward pass (results do not depend on it).
        epsilon: +-range of deeper/earlier_sparser around `sparsity`.
        owl_lambda, owl_threshold: OWL's lambda (range +-lambda) and outlier multiplier M.
        owl_granularity: "block" (official OWL: one ratio per decoder block) or "matrix" (the
            diffusion-LM study's variant: one ratio and sparsity per weight matrix).
        true_sequential: SparseGPT only: prune [q,k,v], then [o], [gate,up], [down] with inputs
            recomputed in between (the official `--true-sequential`), instead of all at once.
        blocksize, percdamp: SparseGPT's column block and damping (fraction of mean diag H).
        reference_quirks: magnitude / SparseGPT threshold rule `score <= sorted[int(n*s)]` of the
            official code (one entry more per matrix / block) instead of exactly int(n*s).

    Returns:
        PruneResult with keep-masks, per-matrix targets, per-block targets and OWL ratios.
    """
    nm = _check_arguments(method, sparsity, pattern, allocation, calibration)
    target = nm[0] / nm[1] if nm is not None else float(sparsity)  # type: ignore[arg-type]
    dmap = find_decoder(model)
    blocks = list(dmap.layers)
    prefix = dmap.spec.layers
    linears = [block_linears(block) for block in blocks]
    full = [{n: f"{prefix}.{i}.{n}" for n in mods} for i, mods in enumerate(linears)]

    was_training = model.training
    model.eval()
    try:
        inputs = None
        if method != "magnitude" or allocation == "owl":
            batches = calibration_batches(calibration, batch_size)  # type: ignore[arg-type]
            inputs = capture_block_inputs(model, blocks[0], batches)

        outlier_ratios: dict[str, float] = {}
        if allocation == "owl":
            per_matrix = owl_granularity == "matrix"
            if owl_granularity not in ("block", "matrix"):
                raise ValueError(
                    f"owl_granularity must be 'block' or 'matrix', got {owl_granularity!r}"
                )
            ratios = _owl_ratios(blocks, linears, inputs, owl_threshold, per_matrix)  # type: ignore[arg-type]
            flat = owl_sparsities([r for rs in ratios for r in rs], target, owl_lambda)
            targets: dict[str, float] = {}
            if per_matrix:
                it = iter(flat)
                for names in full:
                    for name in names.values():
                        targets[name] = next(it)
                outlier_ratios = {
                    name: r
                    for names, rs in zip(full, ratios)
                    for name, r in zip(names.values(), rs)
                }
            else:
                for names, s in zip(full, flat):
                    targets.update(dict.fromkeys(names.values(), s))
                outlier_ratios = {f"{prefix}.{i}": rs[0] for i, rs in enumerate(ratios)}
        else:
            per_layer = layer_sparsities(allocation, len(blocks), target, epsilon=epsilon)
            targets = {name: s for names, s in zip(full, per_layer) for name in names.values()}

        masks: dict[str, torch.Tensor] = {}
        for i, (block, mods) in enumerate(zip(blocks, linears)):
            if method == "magnitude":
                for name, lin in mods.items():
                    zero = magnitude_prune_mask(
                        lin.weight, targets[full[i][name]], nm, reference_quirks=reference_quirks
                    )
                    lin.weight.data[zero] = 0
                    masks[full[i][name]] = ~zero
                continue
            if method == "wanda":
                stats = {
                    n: InputNormStatistics(m.in_features, m.weight.device) for n, m in mods.items()
                }
                with linear_inputs(mods, lambda n, x, stats=stats: stats[n].add_batch(x)):
                    run_block(block, inputs)  # type: ignore[arg-type]
                for name, lin in mods.items():
                    scores = wanda_scores(lin.weight, _seen(stats[name], full[i][name]).scaler_row)
                    zero = wanda_prune_mask(scores, targets[full[i][name]], nm)
                    lin.weight.data[zero] = 0
                    masks[full[i][name]] = ~zero
            else:
                groups = (
                    _sequential_groups(block, mods, inputs)  # type: ignore[arg-type]
                    if true_sequential
                    else [list(mods)]
                )
                for group in groups:
                    sub = {n: mods[n] for n in group}
                    hess = {
                        n: HessianStatistics(m.in_features, m.weight.device) for n, m in sub.items()
                    }
                    with linear_inputs(sub, lambda n, x, hess=hess: hess[n].add_batch(x)):
                        run_block(block, inputs)  # type: ignore[arg-type]
                    for name, lin in sub.items():
                        new_weight, zero = sparsegpt_prune(
                            lin.weight,
                            _seen(hess[name], full[i][name]).hessian,
                            targets[full[i][name]],
                            nm,
                            blocksize=blocksize,
                            percdamp=percdamp,
                            reference_quirks=reference_quirks,
                        )
                        lin.weight.data.copy_(new_weight)
                        masks[full[i][name]] = ~zero
            outputs = run_block(block, inputs)  # type: ignore[arg-type]
            inputs = BlockInputs(outputs, inputs.args, inputs.kwargs)  # type: ignore[union-attr]
    finally:
        model.train(was_training)
    per_block = [sum(targets[n] for n in names.values()) / max(1, len(names)) for names in full]
    return PruneResult(masks, targets, per_block, outlier_ratios)


def _seen(stats, name: str):
    if stats.sequences == 0:
        raise RuntimeError(
            f"{name} received no calibration input (an expert no token was routed to?): use more "
            "calibration data"
        )
    return stats
