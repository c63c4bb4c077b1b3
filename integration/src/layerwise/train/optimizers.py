"""The optimizer of a run and its spectral controller, each built by its package's config.

    optimizer = cfg.optimizer.build(param_groups(cfg, model), total_steps=cfg.train.steps)
    controller = cfg.spectral.build(optimizer, model, ...)       # AlphaDecay / LLR, or None

Weight decay goes to matrices only (`optimizer.weight_decay`); with `spectral`, one param group
per Linear / Embedding (the controllers set one weight decay or LR per module); with `loro`, one
group per low-rank linear (its factor pair) and the rest as the others (`LOROConfig.param_groups`).
"""

from __future__ import annotations

import torch
from torch import nn

from layerwise.train.config import PretrainConfig
from layerwise_core import decay_param_groups

__all__ = ["build_optimizer", "build_spectral_controller", "param_groups"]


def param_groups(cfg: PretrainConfig, model: nn.Module) -> list[dict]:
    """Decay `cfg.optimizer.weight_decay` on matrices only; with `spectral`, the controller's
    groups (one per Linear / Embedding and one for the rest, `spectral_opt`'s `param_groups`);
    with `optimizer: loro`, LORO's (one per factor pair, `sparse_ft.LOROConfig.param_groups`)."""
    weight_decay = cfg.optimizer.weight_decay
    if cfg.optimizer.name == "loro":  # spectral is none (PretrainConfig refuses both)
        return cfg.optimizer.param_groups(model, weight_decay)
    if cfg.spectral.name == "none":
        return decay_param_groups(model, weight_decay)
    return cfg.spectral.param_groups(model, weight_decay)


def build_optimizer(cfg: PretrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """`cfg.optimizer.build(...)` (AdamW, SPAM, Stable-SPAM or LORO) over `param_groups(cfg, model)`;
    Stable-SPAM's cosine spans `train.steps` unless its own `total_steps` is set."""
    return cfg.optimizer.build(param_groups(cfg, model), total_steps=cfg.train.steps)


def build_spectral_controller(cfg: PretrainConfig, optimizer, model: nn.Module, scheduler):
    """AlphaDecay or LayerwiseLR (`cfg.spectral.build`) on the raw model and optimizer, or None.
    The base weight decay / LR is the optimizer's; LLR's adaptive phase spans `train.steps`."""
    if cfg.spectral.name == "none":
        return None
    if cfg.spectral.name == "llr":
        return cfg.spectral.build(
            optimizer, model, total_steps=cfg.train.steps, scheduler=scheduler
        )
    return cfg.spectral.build(optimizer, model, scheduler=scheduler)
