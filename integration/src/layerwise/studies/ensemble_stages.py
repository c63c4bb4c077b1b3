"""Analysis stage of the NeuroTrails study (spec neurotrails.md §9; issue 22): what a multi-head
model's heads predict, alone and together, on the study's evaluation windows.

    ensemble    the combined prediction's loss under both ways of combining the K heads
                (`combine="logits"`: mean of the logits, the official code's; `"probs"`: log of
                the mean of the softmaxes), each head's own loss, the ensemble gain
                (mean head NLL - combined NLL), the heads' pairwise top-1 disagreement
                (off-diagonal mean), the out-of-domain loss on Milton (text no split of the
                `shakespeare` corpus holds), and the model's counts: parameters, nonzero
                parameters, inference FLOPs per token (2 x the nonzero entries of every
                Linear, the K output layers included; embeddings are lookups)

A one-head model (the single dense / sparse arms) is measured by the same code as K = 1: its
combined loss is its loss, its ensemble gain and disagreement are 0. Losses are nats per token
(next-token cross-entropy); perplexity = exp(loss).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from layerwise.studies.analyses import AnalysisContext, _Stage

__all__ = ["EnsembleStage", "head_logits_of", "nonzero_counts"]


def head_logits_of(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every head's logits [B, T, V] (float32): a multi-head model's `head_logits`, else the one
    model's `logits`."""
    out = model(input_ids=input_ids, use_cache=False)
    heads = getattr(out, "head_logits", None)
    return tuple(h.float() for h in heads) if heads is not None else (out.logits.float(),)


def nonzero_counts(model: nn.Module) -> dict[str, float]:
    """`{"params", "nonzero_params", "inference_flops_per_token"}`: every parameter, the nonzero
    ones, and 2 x the nonzero weights of every Linear (a multiply-add each; embeddings are
    lookups, norms elementwise)."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    linear = sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))
    return {
        "params": float(params),
        "nonzero_params": float(nonzero),
        "inference_flops_per_token": 2.0 * linear,
    }


class _Totals:
    """Token-weighted sums over batches: per-head NLL, combined NLL (both modes), disagreement."""

    def __init__(self) -> None:
        self.tokens = 0
        self.heads: list[float] = []
        self.logits = 0.0
        self.probs = 0.0
        self.disagree = 0.0  # sum over pairs i < j and tokens of [argmax_i != argmax_j]

    def add(self, heads: tuple[torch.Tensor, ...], targets: torch.Tensor) -> None:
        flat = targets.reshape(-1)
        vocab = heads[0].size(-1)
        nll = [F.cross_entropy(h.reshape(-1, vocab), flat, reduction="sum").item() for h in heads]
        self.heads = [a + b for a, b in zip(self.heads, nll)] if self.heads else nll
        stacked = torch.stack([h.reshape(-1, vocab) for h in heads])  # [K, N, V]
        self.logits += F.cross_entropy(stacked.mean(0), flat, reduction="sum").item()
        log_mean_p = torch.logsumexp(stacked.log_softmax(-1), dim=0) - math.log(len(heads))
        self.probs += F.nll_loss(log_mean_p, flat, reduction="sum").item()
        top = stacked.argmax(-1)  # [K, N]
        for i in range(len(heads)):
            for j in range(i + 1, len(heads)):
                self.disagree += (top[i] != top[j]).sum().item()
        self.tokens += flat.numel()

    def summary(self, prefix: str = "") -> dict[str, float]:
        k = len(self.heads)
        head_loss = [h / self.tokens for h in self.heads]
        mean_head = sum(head_loss) / k
        out = {
            f"{prefix}loss": self.logits / self.tokens,
            f"{prefix}loss_probs": self.probs / self.tokens,
            f"{prefix}head_loss_mean": mean_head,
            f"{prefix}ensemble_gain": mean_head - self.logits / self.tokens,
            f"{prefix}ensemble_gain_probs": mean_head - self.probs / self.tokens,
        }
        if not prefix:
            out |= {f"head_loss/{i}": v for i, v in enumerate(head_loss)}
            pairs = k * (k - 1) // 2
            out["disagreement"] = self.disagree / (pairs * self.tokens) if pairs else 0.0
        out[f"{prefix}perplexity"] = math.exp(out[f"{prefix}loss"])
        out[f"{prefix}perplexity_probs"] = math.exp(out[f"{prefix}loss_probs"])
        return out


class EnsembleStage(_Stage):
    """The heads' losses, their combinations and their diversity (see the module docstring)."""

    # out-of-domain windows of the evaluation length from Milton (layerwise.data.milton_texts),
    # tokenized with the run's tokenizer; 0: none
    ood_windows: int = Field(64, ge=0)

    def run(self, ctx: AnalysisContext) -> dict[str, Any]:
        if ctx.family != "ar":
            raise ValueError("the ensemble stage measures next-token models (objective ntp)")
        model = ctx.load_model()
        totals = _Totals()
        for start in range(0, len(ctx.evaluation), ctx.batch_size):
            batch = ctx.evaluation[start : start + ctx.batch_size]
            totals.add(head_logits_of(model, batch[:, :-1]), batch[:, 1:])
        summary = totals.summary()
        windows = self._ood_windows(ctx) if self.ood_windows and ctx.tokenizer is not None else None
        if windows is not None and len(windows):
            ood = _Totals()
            for start in range(0, len(windows), ctx.batch_size):
                batch = windows[start : start + ctx.batch_size]
                ood.add(head_logits_of(model, batch[:, :-1]), batch[:, 1:])
            summary |= ood.summary(prefix="ood_")
        summary |= nonzero_counts(model)
        return {"summary": summary, "details": {"heads": len(totals.heads)}}

    def _ood_windows(self, ctx: AnalysisContext) -> torch.Tensor:
        """The first `ood_windows` windows of evaluation length (+1 target) of Milton's text,
        tokenized as the corpus is (no special tokens added; none if the text is too short)."""
        from layerwise.data.shakespeare import milton_texts

        length = ctx.evaluation.shape[1]
        text = "\n\n".join(t.text for t in milton_texts())
        encoded = ctx.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        ids = torch.tensor(encoded, dtype=torch.long)
        count = min(self.ood_windows, len(ids) // length)
        return ids[: count * length].reshape(count, length)
