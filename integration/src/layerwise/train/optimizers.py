"""The optimizer of a run (`optimizer: adamw | spam | stable_spam`), weight decay on matrices only."""

from __future__ import annotations

import re

import torch
from torch import nn

from layerwise.train.config import PretrainConfig
from layerwise_core import decay_param_groups, module_param_groups

__all__ = ["build_optimizer", "build_spectral_controller", "param_groups"]

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


def param_groups(cfg: PretrainConfig, model: nn.Module) -> list[dict]:
    """Decay on matrices only; with `spectral`, one group per Linear/Embedding (the controllers set
    one weight decay or LR per module) and one for the rest (the norms, no decay)."""
    if cfg.spectral == "none":
        return decay_param_groups(model, cfg.optim.weight_decay)
    groups = module_param_groups(model, module_types=(nn.Linear, nn.Embedding))
    for group in groups:
        matrices = all(p.dim() >= 2 for p in group["params"])
        group["weight_decay"] = cfg.optim.weight_decay if matrices else 0.0
    return groups


def build_spectral_controller(cfg: PretrainConfig, optimizer, model: nn.Module, scheduler):
    """AlphaDecay or LayerwiseLR (spectral-opt) on the raw model and optimizer, or None."""
    if cfg.spectral == "none":
        return None
    from spectral_opt import AlphaDecay, LayerwiseLR

    so = cfg.spectral_options
    if cfg.spectral == "alphadecay":
        return AlphaDecay(
            optimizer,
            model,
            cfg.optim.weight_decay,
            ratio=so.ratio or (0.6666, 3.0),
            interval=so.interval or 500,
            exclude_first_last=so.exclude_first_last,
            min_eigs=so.min_eigs,
        )
    return LayerwiseLR(
        optimizer,
        model,
        cfg.optim.lr,
        ratio=so.ratio or (1.0, 5.0),
        interval=so.interval or 100,
        active_fraction=so.active_fraction,
        total_steps=cfg.train.steps,
        ramp_steps=so.ramp_steps,
        scheduler=scheduler,
        min_eigs=so.min_eigs,
    )


def build_optimizer(cfg: PretrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW, SPAM or Stable-SPAM over `param_groups(cfg, model)`."""
    oc = cfg.optim
    groups = param_groups(cfg, model)
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
