"""Analysis stages of the sparsity-vs-depth study (spec studies.md A.3, A.8; issue 19).

    depth_profile   per-layer output variance v_l on the evaluation windows (block hooks, never
                    post-final-norm), weight sparsity s_W(tau) per matrix, MoE expert load and
                    balance: computed here, available now
    depth_metrics   depth_probe's study-A metrics: Jacobian distance from identity, usefulness by
                    affine replacement, causal score, permutation score, normalised attention
                    entropy; reported as not available until those functions are in depth_probe

Summary metrics are scalars per checkpoint (the report gives mean +- std over seeds per run);
the per-layer profiles go to `details`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import nn

from layerwise.studies.analyses import AnalysisContext, StageUnavailableError, _Stage
from layerwise.train.layer_variance import LayerVarianceMonitor

__all__ = ["DEPTH_PROBE_METRICS", "DepthMetricsStage", "DepthProfileStage", "weight_sparsity"]


@torch.no_grad()
def weight_sparsity(weight: torch.Tensor, thresholds: list[float]) -> dict[str, float]:
    """s_W(tau) = mean 1[|w| < tau RMS(W)] for each tau (spec A.3.8): the share of a matrix's
    entries below tau times its root-mean-square, `{"<tau>": s}`."""
    w = weight.detach().float()
    rms = w.square().mean().sqrt()
    return {f"{tau:g}": (w.abs() < tau * rms).float().mean().item() for tau in thresholds}


def _matrices(block: nn.Module) -> dict[str, torch.Tensor]:
    """The weight matrices of a decoder block (2-D Linear weights; MoE experts' 3-D tensors)."""
    out = {}
    for name, param in block.named_parameters():
        if param.ndim >= 2 and "norm" not in name:
            out[name] = param
    return out


class DepthProfileStage(_Stage):
    """Per-layer output variance, weight sparsity and expert load of a checkpoint.

    Summary: `loss`; `var_last` (v of the last block), `var_first`, `var_growth` (v_last /
    v_first); `weight_sparsity_<tau>` (mean over the blocks' matrices); for an MoE model
    `expert_balance` (mean over layers of max(0, 1 - std(f) / mean(f)), f = the share of the
    top-k selections each expert gets on the evaluation windows) and `expert_max_load` (the
    largest f times E: 1 when balanced). Details: `variance` [L], `weight_sparsity` per block and
    matrix, `expert_load` [L][E]."""

    thresholds: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1])

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        from layerwise_core import find_decoder

        model = ctx.load_model()
        monitor = LayerVarianceMonitor(model)
        router_logits: list[list[torch.Tensor]] = []
        is_moe = getattr(model.config, "model_type", "") == "coe"
        inputs = ctx.evaluation[:, :-1]
        for start in range(0, len(inputs), ctx.batch_size):
            batch = inputs[start : start + ctx.batch_size]
            with monitor.armed():
                out = model(input_ids=batch, output_router_logits=True) if is_moe else model(batch)
            if is_moe:
                router_logits.append(list(out.router_logits))
        variance = monitor.record()
        monitor.close()
        profile = [variance[f"layer_variance/{i}"] for i in range(len(monitor.layers))]
        summary: dict[str, float] = {"loss": ctx.baseline()}
        summary["var_first"], summary["var_last"] = profile[0], profile[-1]
        summary["var_growth"] = profile[-1] / profile[0]
        per_block = []
        for block in find_decoder(model).layers:
            per_block.append(
                {name: weight_sparsity(w, self.thresholds) for name, w in _matrices(block).items()}
            )
        for tau in self.thresholds:
            values = [m[f"{tau:g}"] for block in per_block for m in block.values()]
            summary[f"weight_sparsity_{tau:g}"] = sum(values) / len(values)
        details: dict[str, Any] = {"variance": profile, "weight_sparsity": per_block}
        if is_moe:
            from coe_moe import routing_stats

            calls = model.config.num_iterations
            layers = len(router_logits[0]) // calls
            loads, balances = [], []
            for layer in range(layers):
                logits = [
                    torch.cat([batch[layer * calls + t] for batch in router_logits])
                    for t in range(calls)
                ]
                load = routing_stats(logits, model.config.top_k).load.mean(0)  # [E]
                loads.append(load.tolist())
                balances.append(max(0.0, 1.0 - (load.std() / load.mean()).item()))
            experts = len(loads[0])
            summary["expert_balance"] = sum(balances) / len(balances)
            summary["expert_max_load"] = max(max(row) for row in loads) * experts
            details["expert_load"] = loads
        return {"summary": summary, "details": details}


# metric -> the depth_probe function the depth_metrics stage calls (Z1's study-A metrics)
DEPTH_PROBE_METRICS = {
    "jacobian": "jacobian_distance",
    "usefulness": "usefulness",
    "causal": "causal_scores",
    "permutation": "permutation_scores",
    "attention_entropy": "attention_entropy",
}


class DepthMetricsStage(_Stage):
    """depth_probe's metrics of study A on the evaluation windows (spec A.3.2-5, A.3.8):

    - `jacobian/mean`: mean over blocks of D_l = ||J_l - I||_F / d (row-wise, sampled tokens);
    - `usefulness`: U = #useful / L (block replaced by its least-squares affine map; useful iff
      the loss ratio exceeds `useful_ratio`);
    - `causal/global`: mean over skipped blocks s of the mean relative change of later updates;
    - `permutation/global`: mean |L_swap - L| / L over all block pairs;
    - `attention_entropy/mean`: normalised entropy H / log(t + 1) over heads and queries.

    Which function computes each is `DEPTH_PROBE_METRICS`; until depth_probe has them the stage
    is reported as not available (and retried by a later invocation)."""

    metrics: list[str] = Field(default_factory=lambda: list(DEPTH_PROBE_METRICS))
    jacobian_tokens: int = Field(512, ge=1)  # tokens sampled for the Jacobian (cost: d backwards)
    useful_ratio: float = Field(1.10, gt=1.0)  # spec A.3.3: useful iff L_lin / L_base > 1.10

    def unavailable(self) -> str | None:
        import depth_probe

        missing = [
            DEPTH_PROBE_METRICS[m]
            for m in self.metrics
            if not hasattr(depth_probe, DEPTH_PROBE_METRICS.get(m, m))
        ]
        unknown = [m for m in self.metrics if m not in DEPTH_PROBE_METRICS]
        if unknown:
            return (
                f"unknown depth_metrics metrics {unknown}: choose from {list(DEPTH_PROBE_METRICS)}"
            )
        if missing:
            return (
                f"depth_probe has no {', '.join(missing)} yet (study A's metrics, issue 19): "
                "rerun the study once they land (finished runs only run their missing analyses)"
            )
        return None

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        import depth_probe

        if (reason := self.unavailable()) is not None:
            raise StageUnavailableError(reason)
        model = ctx.load_model()
        windows = ctx.evaluation
        summary: dict[str, float] = {"loss": ctx.baseline()}
        details: dict[str, Any] = {}
        for metric in self.metrics:
            fn = getattr(depth_probe, DEPTH_PROBE_METRICS[metric])
            kwargs: dict[str, Any] = {"batch_size": ctx.batch_size}
            if metric == "jacobian":
                kwargs["max_tokens"] = self.jacobian_tokens
            if metric == "usefulness":
                kwargs["threshold"] = self.useful_ratio
            with torch.enable_grad() if metric == "jacobian" else torch.no_grad():
                result = fn(model, windows, **kwargs)
            values = result.as_dict() if hasattr(result, "as_dict") else dict(result)
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(float(value)):
                    summary[f"{metric}/{key}"] = float(value)
            details[metric] = values
        return {"summary": summary, "details": details}
