"""The optimizer of a run (`optimizer: adamw | spam | stable_spam`), weight decay on matrices only."""

from __future__ import annotations

import re

import torch
from torch import nn

from layerwise.train.config import PretrainConfig
from layerwise_core import decay_param_groups

__all__ = ["build_optimizer"]

# SPAM's sparse momentum applies to the attention and MLP matrices only (as in the reference runs)
_SPARSE_MOMENTUM = re.compile(r"(self_attn|mlp)\.")


def _with_density(groups: list[dict], density: float) -> list[dict]:
    out = []
    for group in groups:
        if group["weight_decay"] == 0.0 or density >= 1.0:
            out.append(group)
            continue
        pairs = list(zip(group["param_names"], group["params"]))
        sparse = [(n, p) for n, p in pairs if _SPARSE_MOMENTUM.search(n)]
        dense = [(n, p) for n, p in pairs if not _SPARSE_MOMENTUM.search(n)]
        for chosen, extra in ((sparse, {"density": density}), (dense, {})):
            if chosen:
                out.append(
                    {
                        **group,
                        "params": [p for _, p in chosen],
                        "param_names": [n for n, _ in chosen],
                        **extra,
                    }
                )
    return out


def build_optimizer(cfg: PretrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW, SPAM or Stable-SPAM over `decay_param_groups(model, optim.weight_decay)`."""
    oc = cfg.optim
    groups = decay_param_groups(model, oc.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=oc.lr, betas=oc.betas, eps=oc.eps)
    if cfg.optimizer == "spam":
        from spam_opt import SPAM

        sc = cfg.spam
        return SPAM(
            _with_density(groups, sc.density),
            lr=oc.lr,
            betas=oc.betas,
            eps=oc.eps,
            warmup_steps=sc.warmup_steps,
            threshold=sc.threshold,
            reset_interval=sc.reset_interval,
            clip_delay=sc.clip_delay,
            reference_quirks=sc.reference_quirks,
        )
    from spam_opt import StableSPAM

    ss = cfg.stable_spam
    return StableSPAM(
        groups,
        lr=oc.lr,
        betas=oc.betas,
        eps=oc.eps,
        gamma1=ss.gamma1,
        gamma2=ss.gamma2,
        gamma3=ss.gamma3,
        total_steps=ss.total_steps or cfg.train.steps,
        eta_min=ss.eta_min,
        reset_interval=ss.reset_interval,
        reference_quirks=ss.reference_quirks,
    )
