"""Analysis stages: what a study measures on a trained run at each of its checkpoints.

A stage is a config (one of `ANALYSES`, chosen by `name:` in the study's `analyses:` section) with

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

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from layerwise_core import LayerwiseConfig, masked_copies

__all__ = [
    "ANALYSES",
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

    def _uniforms(self, shape: tuple[int, ...], purpose: str) -> torch.Tensor:
        digest = hashlib.sha256(f"study-{purpose}\x00{self.mask_seed}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
        return torch.rand(shape, generator=generator)

    @torch.no_grad()
    def loss(self, model: nn.Module) -> dict[str, float]:
        """{"loss": ...} on the evaluation windows. AR: mean next-token cross-entropy. DLM: the
        fixed-mask ELBO per token at each rate t, (1/T) sum_masked CE / t, masks drawn once per
        (window, t) from `mask_seed` (the same for every model compared), and its mean over t."""
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
        tokens = blocks[:, :-1]  # T tokens per window, as the AR model scores
        out = {}
        for t in self.mdm_t:
            masked_all = self._uniforms(tuple(tokens.shape), f"elbo-{t}") < t
            total = 0.0
            for start in range(0, len(tokens), self.batch_size):
                batch = tokens[start : start + self.batch_size]
                masked = masked_all[start : start + self.batch_size]
                logits = model(input_ids=batch.masked_fill(masked, self.mask_token_id)).logits
                ce = F.cross_entropy(logits[masked].float(), batch[masked], reduction="sum")
                total += ce.item() / t
            out[f"elbo_t{t:g}"] = total / tokens.numel()
        out["loss"] = sum(out.values()) / len(self.mdm_t)
        return out

    def probe_inputs(self) -> torch.Tensor:
        """The windows activations are probed on: the calibration windows as they are (AR), or
        `mdm_copies` masked copies of each, every token masked w.p. t ~ U[0, 1] (DLM, spec B.3)."""
        if self.family == "ar":
            return self.calibration
        return masked_copies(
            self.calibration, self.mask_token_id, self.mdm_copies, seed=self.mask_seed
        )


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
        return {"summary": ctx.loss(ctx.load_model()), "details": {}}


_SHORT = {"uniform": "uniform", "earlier_sparser": "eis", "deeper_sparser": "dis"}


class WandaStage(_Stage):
    """Wanda at average sparsity S under uniform / earlier-is-sparser / deeper-is-sparser
    allocations (spec B.5: s_l = S -+ eps +- 2 eps l / (L - 1)), via `sparse_ft.prune` with
    calibration on the clean calibration windows (unmasked for a DLM too, as the paper does).
    Summary: the relative loss increase of each arm (`uniform`, `eis_<eps>`, `dis_<eps>`)."""

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

        base = ctx.loss(ctx.load_model())
        summary, details = {"loss": base["loss"]}, {"base": base}
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
            summary[f"{label}/rel_increase"] = relative_increase(after["loss"], base["loss"])
            details[label] = {
                "loss": after,
                "layer_sparsity": result.layer_sparsity,
                "overall_sparsity": result.overall_sparsity,
            }
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
        base = ctx.loss(ctx.load_model())
        summary, details = {"loss": base["loss"]}, {"base": base}
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
                summary[f"{label}/rel_increase"] = relative_increase(after["loss"], base["loss"])
                details[label] = {"loss": after}
        return {"summary": summary, "details": details}


class CollapseStage(_Stage):
    """Layer collapse (spec B.3 / B.4, `depth_probe`), on the probe windows (a DLM on masked
    copies): per-layer max-to-median ratio and top channels at the attention input, the outlier
    channel's magnitude over the median channel's; the per-token / pooled / detrended block-output
    similarities with and without that channel; the redundancy profile rho_l = S_{l,l+1}
    (per-token) and its early-vs-late contrast (mean over the first third - mean over the last);
    the relative loss increase when each block is skipped and when the outlier channel is zeroed
    at every block's output (hook; undone after)."""

    zero_outlier: bool = True  # also measure the loss with the top channel zeroed

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        import depth_probe

        model = ctx.load_model()
        inputs = ctx.probe_inputs()
        capture = depth_probe.capture_depth(model, inputs, logits=False)
        massive = depth_probe.massive_activations(capture)
        channel = massive.outlier_channels(1)[0]
        sims = {}
        for variant in depth_probe.SIMILARITY_VARIANTS:
            for zeroed in (False, True):
                matrix = depth_probe.similarity_matrix(
                    capture, variant=variant, zero_channels=[channel] if zeroed else None
                )
                sims[f"{variant}{'_zeroed' if zeroed else ''}"] = matrix
        per_token = sims["per_token"]
        rho = [per_token[i, i + 1].item() for i in range(per_token.shape[0] - 1)]
        third = len(rho) // 3  # needs L >= 5 blocks (3 neighbour pairs)
        contrast = sum(rho[:third]) / third - sum(rho[-third:]) / third if third else None
        base = ctx.loss(model)
        skip = []
        for index in range(len(rho) + 2):  # every block (L = len(h_1..h_{L-1}) + 1)
            with depth_probe.skip_layers(model, [index]):
                skip.append(relative_increase(ctx.loss(model)["loss"], base["loss"]))
        ratios = massive.as_dict()["top_channel_over_median_channel"]
        summary = {
            "loss": base["loss"],
            "max_mmr": max(massive.max_median_ratio.tolist()),
            "max_top_over_median": max(ratios),
            "early_late_contrast": contrast,
            "mean_skip_rel_increase": sum(skip) / len(skip),
        }
        if self.zero_outlier:
            zeroed = _loss_with_channel_zeroed(ctx, model, channel)
            summary["zero_outlier/rel_increase"] = relative_increase(zeroed, base["loss"])
        pooled = sims["pooled"]
        pooled_zeroed = sims["pooled_zeroed"]
        summary["pooled_drop_zeroed"] = (pooled - pooled_zeroed).mean().item()
        details = {
            **massive.as_dict(),
            "outlier_channel": channel,
            "redundancy": rho,
            "skip_rel_increase": skip,
            "similarity": {k: v.tolist() for k, v in sims.items()},
        }
        return {"summary": summary, "details": details}


@torch.no_grad()
def _loss_with_channel_zeroed(ctx: AnalysisContext, model: nn.Module, channel: int) -> float:
    """The loss with hidden channel `channel` zeroed at every block's output (spec B.4 (a)),
    forward hooks removed afterwards."""
    from layerwise_core import find_decoder

    def zero(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[..., channel] = 0
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [layer.block.register_forward_hook(zero) for layer in find_decoder(model)]
    try:
        return ctx.loss(model)["loss"]
    finally:
        for handle in handles:
            handle.remove()


# name -> stage config (`analyses: {label: {name: wanda, ...}}`)
ANALYSES: dict[str, type[_Stage]] = {
    "loss": LossStage,
    "wanda": WandaStage,
    "quantize": QuantizeStage,
    "collapse": CollapseStage,
}
