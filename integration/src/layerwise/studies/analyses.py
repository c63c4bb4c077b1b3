"""Analysis stages: what a study measures on a trained run at each of its checkpoints.

A stage is a config (one of `layerwise.studies.stages.ANALYSES`, chosen by `name:` in the study's
`analyses:` section) with

    unavailable() -> str | None          why it cannot run here (a package API not there yet)
    run(ctx: AnalysisContext) -> dict    {"summary": {metric: float}, "details": {...}}

and the runner writes what `run` returns to `<run>/analyses/<label>/step_<N>.json`. The report
tabulates the `summary` scalars (mean +- std over seeds, pooled by tag, paired across a tag); the
`details` (per-layer profiles, matrices) stay in the results JSON.

Compression stages report RELATIVE loss increases, (L_after - L_before) / L_before, so that an
autoregressive model (next-token cross-entropy) and a masked-diffusion model (fixed-mask ELBO at
the rates `probe.mdm_t`, spec B.7) can be compared although their losses are not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from layerwise_core import LayerwiseConfig

__all__ = [
    "STAGES",
    "AnalysisContext",
    "CollapseStage",
    "LossStage",
    "QuantizeStage",
    "StageUnavailableError",
    "WandaStage",
]


class StageUnavailableError(RuntimeError):
    """A stage whose implementation is not in this installation (yet)."""


@dataclass
class AnalysisContext:
    """What a stage gets: one checkpoint of one trained run, and the windows to measure on."""

    run_dir: Path
    step: int  # the checkpoint's optimizer step
    fraction: float  # step / train.steps
    family: Literal["ar", "dlm"]  # objective ntp (causal) or mdm (masked diffusion)
    calibration: torch.Tensor  # [n, T] token ids: the first training blocks, inputs only
    evaluation: torch.Tensor  # [m, T + 1] validation blocks
    load_model: Callable[[], nn.Module]  # a fresh copy of the checkpoint's model, in eval mode
    mask_token_id: int | None  # masked diffusion: the [MASK] id
    mdm_t: list[float]
    mdm_copies: int
    mask_seed: int
    batch_size: int
    tokenizer: Any = None  # the run's tokenizer (stages that tokenize text of their own)

    _baseline: float | None = None

    @torch.no_grad()
    def loss(self, model: nn.Module) -> dict[str, float]:
        """{"loss": ...} on the evaluation windows. AR: mean next-token cross-entropy. DLM: the
        fixed-mask ELBO per token at each rate t of `mdm_t` (`depth_probe.fixed_mask_elbo`:
        (1/N) sum_masked CE / t, masks drawn once from `mask_seed`, the same for every model
        compared), `elbo_t<t>`, and `loss` = their mean."""
        blocks = self.evaluation
        if self.family == "ar":
            total, count = 0.0, 0
            for start in range(0, len(blocks), self.batch_size):
                batch = blocks[start : start + self.batch_size]
                logits = model(input_ids=batch[:, :-1]).logits.float()
                total += F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
                ).item()
                count += batch[:, 1:].numel()
            return {"loss": total / count}
        import depth_probe

        tokens = blocks[:, :-1]  # T tokens per window, as the AR model scores
        out = {
            f"elbo_t{t:g}": depth_probe.fixed_mask_elbo(
                model, tokens, t, seed=self.mask_seed, batch_size=self.batch_size
            )
            for t in self.mdm_t
        }
        out["loss"] = sum(out.values()) / len(self.mdm_t)
        return out

    def baseline(self) -> float:
        """`loss(...)["loss"]` of the checkpoint's model as trained (computed once)."""
        if self._baseline is None:
            self._baseline = self.loss(self.load_model())["loss"]
        return self._baseline


def relative_increase(after: float, before: float) -> float:
    """(after - before) / before: the loss increase of an intervention relative to the model's."""
    return (after - before) / before


class _Stage(LayerwiseConfig):
    def unavailable(self) -> str | None:
        """Why this stage cannot run in this installation; None if it can."""
        return None

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        raise NotImplementedError


class LossStage(_Stage):
    """The checkpoint's loss on the evaluation windows (`AnalysisContext.loss`)."""

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        summary = ctx.loss(ctx.load_model())
        ctx._baseline = summary["loss"]
        return {"summary": summary, "details": {}}


_SHORT = {"uniform": "uniform", "earlier_sparser": "eis", "deeper_sparser": "dis"}


class WandaStage(_Stage):
    """Wanda at average sparsity S under uniform / earlier-is-sparser / deeper-is-sparser
    allocations (spec B.5: s_l = S -+ eps +- 2 eps l / (L - 1)), via `sparse_ft.prune` with
    calibration on the clean calibration windows (unmasked for a DLM too, as the paper does).
    Summary: the relative loss increase of each arm (`uniform`, `eis_<eps>`, `dis_<eps>`) and
    `eis_minus_dis_<eps>` (< 0: the earlier-sparser allocation hurts less)."""

    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    allocations: list[Literal["uniform", "earlier_sparser", "deeper_sparser"]] = Field(
        default_factory=lambda: ["uniform", "earlier_sparser", "deeper_sparser"]
    )
    epsilons: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2])

    def arms(self) -> list[tuple[str, str, float]]:
        """(label, allocation, epsilon) of every pruning arm."""
        out = []
        for allocation in self.allocations:
            if allocation == "uniform":
                out.append(("uniform", allocation, 0.0))
            else:
                out += [(f"{_SHORT[allocation]}_{e:g}", allocation, e) for e in self.epsilons]
        return out

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        import sparse_ft

        base = ctx.baseline()
        summary, details = {"loss": base}, {}
        for label, allocation, epsilon in self.arms():
            model = ctx.load_model()
            result = sparse_ft.prune(
                model,
                "wanda",
                self.sparsity,
                allocation=allocation,
                epsilon=epsilon,
                calibration=ctx.calibration,
                batch_size=ctx.batch_size,
            )
            after = ctx.loss(model)
            summary[f"{label}/rel_increase"] = relative_increase(after["loss"], base)
            details[label] = {
                "loss": after,
                "layer_sparsity": result.layer_sparsity,
                "overall_sparsity": result.overall_sparsity,
            }
        for epsilon in self.epsilons:  # < 0: earlier-is-sparser hurts less (the DLM claim)
            eis, dis = (summary.get(f"{k}_{epsilon:g}/rel_increase") for k in ("eis", "dis"))
            if eis is not None and dis is not None:
                summary[f"eis_minus_dis_{epsilon:g}"] = eis - dis
        return {"summary": summary, "details": details}


class QuantizeStage(_Stage):
    """GPTQ and RTN at 2-4 bits, group size g (spec B.7: g = 32; §C), by `sparse_ft.quantize`,
    the model fake-quantised in place, calibrated on the clean calibration windows. Summary: the
    relative loss increase of each arm (`gptq_3bit`, `rtn_4bit`, ...)."""

    methods: list[Literal["gptq", "rtn"]] = Field(default_factory=lambda: ["gptq", "rtn"])
    bits: list[int] = Field(default_factory=lambda: [2, 3, 4])
    group_size: int = Field(32, ge=1)
    # the study's GPTQ_VIRTUAL (spec B.5): symmetric min-max grid, true-sequential sub-layer
    # groups for Llama names, calibration unmasked for a DLM too ("diffusion": masked copies)
    sym: bool = True
    true_sequential: bool = True
    calibration_masking: Literal["none", "diffusion"] = "none"

    def unavailable(self) -> str | None:
        import sparse_ft

        if not hasattr(sparse_ft, "quantize"):
            return (
                "sparse_ft.quantize (GPTQ / RTN, issue 18) is not available yet in this "
                "installation: remove the stage from `analyses:`, or rerun the study once it "
                "lands (finished runs only run their missing analyses)"
            )
        return None

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        import sparse_ft

        if (reason := self.unavailable()) is not None:
            raise StageUnavailableError(reason)
        base = ctx.baseline()
        summary, details = {"loss": base}, {}
        for method in self.methods:
            for bits in self.bits:
                model = ctx.load_model()
                sparse_ft.quantize(
                    model,
                    method,
                    bits=bits,
                    group_size=self.group_size,
                    sym=self.sym,
                    true_sequential=self.true_sequential,
                    calibration=ctx.calibration,
                    batch_size=ctx.batch_size,
                    calibration_masking=self.calibration_masking,
                    seed=ctx.mask_seed,
                )
                after = ctx.loss(model)
                label = f"{method}_{bits}bit"
                summary[f"{label}/rel_increase"] = relative_increase(after["loss"], base)
                details[label] = {"loss": after}
        return {"summary": summary, "details": details}


class CollapseStage(_Stage):
    """Layer collapse (spec B.3 / B.4 / B.7) with `depth_probe`'s study metrics, on the probe
    windows (`depth_probe.diffusion_probe_inputs`: a DLM on `probe.mdm_copies` masked copies):
    channel magnitudes and MMR at every linear input (`channel_magnitudes`), the super-outlier rule
    at the attention input (`find_super_outliers`; without one, the top channel of block 0 stands
    in for c*), the three block-output similarities with and without c* (`layer_similarities`),
    redundancy rho_l, its early-vs-late contrast, the collapse run and the pooled drop
    (`layer_collapse`), heavy-tail alpha per weight matrix on b x b FARMS blocks
    (`heavy_tail_alphas`, b = 32 at d = 128), the relative loss increase when each block is
    skipped (`skip_layers`) and when c* is removed at the blocks where it qualifies (all blocks
    without a super-outlier) by a hook on the block output and by zeroing the rows that write it
    (`zero_outlier_channel`, undone after)."""

    alpha_block: int = Field(32, ge=2)  # FARMS block size b (spec B.7: 32 at d = 128)
    min_ratio: float = Field(100.0, gt=0.0)  # super-outlier thresholds (depth_probe's defaults)
    min_persistence: float = Field(0.9, ge=0.0, le=1.0)
    min_layers: int = Field(3, ge=1)

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        import depth_probe as dp

        model = ctx.load_model()
        ids, mask = dp.diffusion_probe_inputs(
            model, ctx.calibration, copies=ctx.mdm_copies, seed=ctx.mask_seed
        )
        mags = dp.channel_magnitudes(model, ids, mask, batch_size=ctx.batch_size)
        outlier = dp.find_super_outliers(
            mags,
            min_layers=self.min_layers,
            min_ratio=self.min_ratio,
            min_persistence=self.min_persistence,
        )
        channel = outlier.channel if outlier.found else int(mags.top_channels()[0, 0])
        zero_layers = outlier.layers() if outlier.found else None
        sims = dp.layer_similarities(
            model, ids, mask, zero_channels=[channel], batch_size=ctx.batch_size
        )
        collapse = dp.layer_collapse(sims)
        alphas = dp.heavy_tail_alphas(model, block=self.alpha_block, seed=ctx.mask_seed)
        base = ctx.baseline()
        skip = []
        for index in range(len(alphas.per_layer)):
            with dp.skip_layers(model, [index]):
                skip.append(relative_increase(ctx.loss(model)["loss"], base))
        zeroed = {}
        for mode in ("hook", "rows"):
            with dp.zero_outlier_channel(model, channel, layers=zero_layers, mode=mode):
                zeroed[mode] = relative_increase(ctx.loss(model)["loss"], base)
        alpha = alphas.per_layer.tolist()
        third = max(1, len(alpha) // 3)
        summary = {
            "loss": base,
            "super_outlier_found": float(outlier.found),
            "max_outlier_ratio": mags.outlier_ratio().max().item(),
            "max_block_mmr": mags.block_mmr().max().item(),
            "early_late_contrast": collapse.contrast,
            "collapse_run_length": float(collapse.run_length),
            "pooled_drop": collapse.pooled_drop,
            "alpha_early_minus_late": sum(alpha[:third]) / third - sum(alpha[-third:]) / third,
            "mean_skip/rel_increase": sum(skip) / len(skip),
            "zero_outlier_hook/rel_increase": zeroed["hook"],
            "zero_outlier_rows/rel_increase": zeroed["rows"],
        }
        details = {
            # per-layer profiles (plotted by the report)
            "redundancy": collapse.redundancy.tolist(),
            "block_mmr": mags.block_mmr().tolist(),
            "outlier_ratio": mags.outlier_ratio().tolist(),
            "skip_rel_increase": skip,
            "alpha_per_layer": alpha,
            # the rest
            "outlier_channel": channel,
            "zeroed_layers": zero_layers,
            "super_outliers": outlier.as_dict(),
            "magnitudes": mags.as_dict(),
            "collapse": collapse.as_dict(),
            "similarity": sims.as_dict(),
            "alpha_per_matrix": alphas.per_matrix,
        }
        return {"summary": summary, "details": details}


# this module's stages by name; every stage of every study: layerwise.studies.stages.ANALYSES
STAGES: dict[str, type[_Stage]] = {
    "loss": LossStage,
    "wanda": WandaStage,
    "quantize": QuantizeStage,
    "collapse": CollapseStage,
}
