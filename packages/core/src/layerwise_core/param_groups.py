"""Optimizer parameter groups: weight decay only on matrices, groups by name, module or layer.

Every group carries `param_names` (the key torch.optim uses for named parameters), so controllers
such as spectral-opt can find which module a group belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

__all__ = [
    "decay_param_groups",
    "layer_param_groups",
    "module_param_groups",
    "pattern_param_groups",
]


def _trainable(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in seen:  # tied weights appear once
            seen.add(id(param))
            yield name, param


def _group(named: list[tuple[str, nn.Parameter]], **options: Any) -> dict[str, Any]:
    return {"params": [p for _, p in named], "param_names": [n for n, _ in named], **options}


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups, as in nanoGPT: >=2-D tensors (matmul weights, embeddings) decay; biases and norms don't."""
    decay, no_decay = [], []
    for name, param in _trainable(model):
        (decay if param.dim() >= 2 else no_decay).append((name, param))
    groups = [_group(decay, weight_decay=weight_decay), _group(no_decay, weight_decay=0.0)]
    return [g for g in groups if g["params"]]


def pattern_param_groups(
    model: nn.Module,
    patterns: Mapping[str, Mapping[str, Any]],
    default: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One group per regex (first match wins, searched in the parameter name) + a default group.

    `pattern_param_groups(model, {r"self_attn|mlp": {"density": 0.25}})`
    """
    compiled = [(re.compile(p), dict(opts)) for p, opts in patterns.items()]
    buckets: list[list[tuple[str, nn.Parameter]]] = [[] for _ in compiled]
    rest: list[tuple[str, nn.Parameter]] = []
    for name, param in _trainable(model):
        for i, (regex, _) in enumerate(compiled):
            if regex.search(name):
                buckets[i].append((name, param))
                break
        else:
            rest.append((name, param))
    groups = [_group(b, **opts) for b, (_, opts) in zip(buckets, compiled) if b]
    if rest:
        groups.append(_group(rest, **dict(default or {})))
    return groups


def module_param_groups(
    model: nn.Module, module_types: tuple[type[nn.Module], ...] = (nn.Linear,), **options: Any
) -> list[dict[str, Any]]:
    """One group per module of `module_types` (its direct parameters) + one group for the rest.

    Each per-module group has `module_name`; the rest group has `module_name=None`.
    """
    groups, taken = [], set()
    for mname, module in model.named_modules():
        if isinstance(module, module_types):
            named = [
                (f"{mname}.{n}", p)
                for n, p in module.named_parameters(recurse=False)
                if p.requires_grad and id(p) not in taken
            ]
            if named:
                taken.update(id(p) for _, p in named)
                groups.append(_group(named, module_name=mname, **options))
    rest = [(n, p) for n, p in _trainable(model) if id(p) not in taken]
    if rest:
        groups.append(_group(rest, module_name=None, **options))
    return groups


def layer_param_groups(model: nn.Module, **options: Any) -> list[dict[str, Any]]:
    """One group per decoder layer (`layer_index` = 0..L-1) + one for everything else (`layer_index=None`)."""
    from layerwise_core.decoder_map import find_decoder

    dmap = find_decoder(model)
    owner: dict[int, int] = {}
    for layer in dmap:
        for p in layer.block.parameters():
            owner.setdefault(id(p), layer.index)
    per_layer: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(len(dmap))]
    rest = []
    for name, param in _trainable(model):
        idx = owner.get(id(param))
        (per_layer[idx] if idx is not None else rest).append((name, param))
    groups = [_group(named, layer_index=i, **options) for i, named in enumerate(per_layer) if named]
    if rest:
        groups.append(_group(rest, layer_index=None, **options))
    return groups
