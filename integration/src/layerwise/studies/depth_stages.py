"""Analysis stages of the sparsity-vs-depth study (spec studies.md A.3, A.8; issue 19), on
`depth_probe`'s study-A metrics, measured on the evaluation windows (`probe.eval_windows` held-out
windows of `probe.window_tokens`, the same for every arm):

    depth_profile   per-layer output variance v_l (and of the attention / MLP updates) from block
                    hooks (`layer_variance`, never post-final-norm), weight sparsity s_W(tau)
                    (`weight_sparsity`), MoE expert load and balance (`expert_load`); cheap
    depth_metrics   Jacobian distance from identity (`jacobian_distance`), usefulness by affine
                    replacement (`usefulness`), causal score (`causal_scores`), permutation score
                    (`permutation_scores`), attention entropy (`attention_sparsity`)

Summary metrics are scalars per checkpoint (the report gives mean +- std over seeds per run and
pooled by tag); the per-layer profiles go to `details`. A metric whose depth_probe function is not
in this installation makes its stage "not available" (retried by a later invocation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from layerwise.studies.analyses import AnalysisContext, StageUnavailableError, _Stage

__all__ = ["DEPTH_PROBE_METRICS", "DepthMetricsStage", "DepthProfileStage"]

# metric -> the depth_probe function that computes it
DEPTH_PROBE_METRICS = {
    "variance": "layer_variance",
    "weight_sparsity": "weight_sparsity",
    "expert_load": "expert_load",
    "jacobian": "jacobian_distance",
    "usefulness": "usefulness",
    "causal": "causal_scores",
    "permutation": "permutation_scores",
    "attention": "attention_sparsity",
}


def _missing(metrics: list[str]) -> str | None:
    import depth_probe

    unknown = [m for m in metrics if m not in DEPTH_PROBE_METRICS]
    if unknown:
        return f"unknown metrics {unknown}: choose from {list(DEPTH_PROBE_METRICS)}"
    missing = [
        DEPTH_PROBE_METRICS[m] for m in metrics if not hasattr(depth_probe, DEPTH_PROBE_METRICS[m])
    ]
    if missing:
        return (
            f"depth_probe has no {', '.join(missing)} yet (study A's metrics, issue 19): rerun "
            "the study once they land (finished runs only run their missing analyses)"
        )
    return None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean(values: list[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def _thirds(profile: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last third of a per-layer profile."""
    third = max(1, len(profile) // 3)
    return _mean(profile[:third]), _mean(profile[-third:])


class DepthProfileStage(_Stage):
    """Per-layer output variance, weight sparsity and expert load of a checkpoint (spec A.3.1,
    A.3.8).

    Summary: `loss`; `var_last` (v of the last block, before the final norm), `var_first`,
    `var_growth` = var_last / var_first; `weight_sparsity_<tau>` (mean over the blocks' matrices);
    for an MoE model `expert_balance` (mean over layers of max(0, 1 - std(f) / mean(f)), f = the
    share of the top-k selections per expert) and `expert_max_load` (max f x E; 1 if balanced).
    Details: `variance`, `attn_variance`, `mlp_variance` [L], `weight_sparsity` per layer and
    threshold, `expert_load` [L][E]."""

    thresholds: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1])

    def unavailable(self) -> str | None:
        return _missing(["variance", "weight_sparsity", "expert_load"])

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        if (reason := self.unavailable()) is not None:
            raise StageUnavailableError(reason)
        import depth_probe as dp

        model = ctx.load_model()
        windows, batch = ctx.evaluation, ctx.batch_size
        variance = dp.layer_variance(model, windows, batch_size=batch)
        profile = variance.output_var.tolist()
        summary: dict[str, float] = {"loss": ctx.baseline()}
        summary["var_first"], summary["var_last"] = profile[0], profile[-1]
        summary["var_growth"] = profile[-1] / profile[0]
        sparsity = dp.weight_sparsity(model, self.thresholds)
        for k, tau in enumerate(sparsity.thresholds):
            summary[f"weight_sparsity_{tau:g}"] = float(sparsity.mean[k])
        details: dict[str, Any] = {
            "variance": profile,
            "attn_variance": variance.attn_var.tolist(),
            "mlp_variance": variance.mlp_var.tolist(),
            "weight_sparsity": sparsity.per_layer.tolist(),
            "thresholds": sparsity.thresholds,
        }
        if getattr(model.config, "num_experts", None):  # an MoE model
            load = dp.expert_load(model, windows, batch_size=batch)
            summary["expert_balance"] = load.mean_balance
            summary["expert_max_load"] = float(load.load.max()) * load.load.shape[1]
            details["expert_load"] = load.load.tolist()
        return {"summary": summary, "details": details}


class DepthMetricsStage(_Stage):
    """How much of its depth a checkpoint uses (spec A.3.2-5, A.3.8), with depth_probe:

    - `jacobian_mean`, `jacobian_early`, `jacobian_late`: D_l = ||J_l - I||_F / d (row-wise J
      averaged over positions, cross-token paths included) over all blocks, the first third and
      the last third (expected: D falls with depth);
    - `usefulness`: U = #useful / L, block l useful iff replacing it by its least-squares affine
      map raises the loss by more than `useful_ratio` (fit on the evaluation windows, as the
      official code); `usefulness_excess`: the mean over blocks of r_l - 1 (r_l = L_affine / L),
      a continuous version for tiny models, where no block crosses the 1.10 ratio;
    - `causal`: mean over skipped blocks s of c_s (relative change of later blocks' updates);
    - `permutation`: mean |L_swap - L| / L over all block pairs;
    - `attention_entropy`: mean over layers of the normalised entropy H / log(t + 1) (queries
      t >= `min_query`), `attention_keys`: mean effective keys exp(H).

    Details: every per-layer profile and matrix. Cost at L = 16, 64 x 128 tokens: L (L - 1) / 2
    + 2L + 2 forwards, and d backward passes per block and Jacobian micro-batch."""

    metrics: list[str] = Field(
        default_factory=lambda: ["jacobian", "usefulness", "causal", "permutation", "attention"]
    )
    useful_ratio: float = Field(1.10, gt=1.0)  # spec A.3.3
    # Jacobian: output channels differentiated (None: all d, exact), windows used (None: all)
    jacobian_rows: int | None = Field(None, ge=1)
    jacobian_windows: int | None = Field(16, ge=1)
    min_query: int = Field(64, ge=0)  # attention entropy over queries t >= min_query (spec A.3.8)

    def unavailable(self) -> str | None:
        return _missing(self.metrics)

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        if (reason := self.unavailable()) is not None:
            raise StageUnavailableError(reason)
        import depth_probe as dp

        model = ctx.load_model()
        windows, batch = ctx.evaluation, ctx.batch_size
        summary: dict[str, float] = {"loss": ctx.baseline()}
        details: dict[str, Any] = {}
        if "jacobian" in self.metrics:
            with torch.enable_grad():
                jac = dp.jacobian_distance(
                    model,
                    windows,
                    rows=self.jacobian_rows,
                    windows=self.jacobian_windows,
                    batch_size=batch,
                    seed=ctx.mask_seed,
                )
            profile = jac.distance.tolist()
            summary["jacobian_mean"] = _mean(profile)
            summary["jacobian_early"], summary["jacobian_late"] = _thirds(profile)
            details["jacobian"] = jac.as_dict()
        if "usefulness" in self.metrics:
            use = dp.usefulness(model, windows, threshold=self.useful_ratio, batch_size=batch)
            summary["usefulness"] = use.score
            summary["usefulness_excess"] = (use.loss_ratio - 1.0).mean().item()
            details["usefulness"] = use.as_dict()
        if "causal" in self.metrics:
            causal = dp.causal_scores(model, windows, batch_size=batch)
            summary["causal"] = causal.score
            details["causal"] = causal.as_dict()
        if "permutation" in self.metrics:
            perm = dp.permutation_scores(model, windows, batch_size=batch)
            summary["permutation"] = perm.score
            details["permutation"] = perm.as_dict()
        if "attention" in self.metrics:
            att = dp.attention_sparsity(
                model,
                windows,
                min_query=min(self.min_query, windows.shape[1] - 2),
                batch_size=batch,
            )
            summary["attention_entropy"] = _mean(att.normalized_entropy.tolist())
            summary["attention_keys"] = _mean(att.effective_keys.tolist())
            details["attention"] = att.as_dict()
        summary = {k: v for k, v in summary.items() if _finite(v) is not None}
        return {"summary": summary, "details": details}
