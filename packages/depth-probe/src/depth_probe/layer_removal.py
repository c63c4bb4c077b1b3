"""Remove decoder blocks from a model in place, permanently or for the length of a `with` block.

Removing block l makes the model compute h_{l+1} = h_l (the block becomes the identity), which is how
ShortGPT, Gromov et al. and the single-layer removal studies score a layer. Doing it by deleting the
block from the `ModuleList` (rather than by a hook that returns the input) is what keeps the rest of
the model consistent:

- attention modules index the KV cache by `layer_idx`: they are renumbered 0..L'-1, otherwise a
  generation with cache reads and writes the wrong cache slots;
- `config.num_hidden_layers` (and per-layer lists such as `layer_types`) shrink, so that a new
  `DynamicCache(config=...)` has one slot per remaining block and `save_pretrained` reloads;
- a skipped block computes nothing, so a sweep costs one forward of the smaller model.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from layerwise_core import find_decoder

__all__ = ["remove_layers", "skip_layers"]

# config fields holding the number of decoder blocks (HF Llama family, GPT-2, OLMo/LLaDA)
_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
# config fields with one entry per block: entries of removed blocks are dropped
_PER_LAYER_FIELDS = ("layer_types", "no_rope_layers")
# config fields listing block indices: removed ones are dropped, the others renumbered
_INDEX_FIELDS = ("mlp_only_layers",)


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct config object the model and its submodules hold."""
    found: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, nn.Module):
            found.setdefault(id(config), config)
    return list(found.values())


def _layer_index(value: Any, what: str) -> int:
    """`value` as a block number: Python / NumPy / 0-d tensor integers only (1.7 is not block 1)."""
    is_bool = isinstance(value, bool) or getattr(value, "dtype", None) in (torch.bool, "bool")
    try:
        if not is_bool:
            return operator.index(value)
    except TypeError:
        pass
    raise ValueError(
        f"{what}: layer indices must be integers, got {value!r} ({type(value).__name__}); "
        "pass whole block numbers such as [1, 2]"
    )


def _normalise(indices: Iterable[int], num_layers: int, what: str) -> list[int]:
    if not isinstance(indices, Iterable) or isinstance(indices, (str, bytes)):
        raise ValueError(
            f"{what}: indices must be a list of block numbers, got {indices!r}; pass e.g. [3]"
        )
    given = [_layer_index(i, what) for i in indices]
    removed = sorted(set(given))
    if len(removed) != len(given):
        repeated = sorted({i for i in given if given.count(i) > 1})
        raise ValueError(f"{what}: layer indices {repeated} are given twice; list each block once")
    bad = [i for i in removed if not 0 <= i < num_layers]
    if bad:
        raise ValueError(
            f"{what}: layer indices {bad} out of range for {num_layers} blocks; "
            f"valid indices are 0..{num_layers - 1}"
        )
    if len(removed) == num_layers:
        raise ValueError(f"{what}: cannot remove all {num_layers} blocks; keep at least one")
    return removed


def _layer_idx_modules(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)]


def _config_snapshot(configs: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    names = (*_COUNT_FIELDS, *_PER_LAYER_FIELDS, *_INDEX_FIELDS)
    return [(c, {n: c.__dict__[n] for n in names if n in c.__dict__}) for c in configs]


def _update_configs(configs: list[Any], num_layers: int, keep: list[int]) -> None:
    new_index = {old: new for new, old in enumerate(keep)}
    for config in configs:
        if getattr(config, "is_heterogeneous", False):
            raise NotImplementedError(
                "remove_layers: heterogeneous configs (per_layer_config) are not supported; "
                "remove the layers and rebuild the per-layer config by hand"
            )
        values = config.__dict__
        for name in _COUNT_FIELDS:
            if values.get(name) == num_layers:
                setattr(config, name, len(keep))
        for name in _PER_LAYER_FIELDS:
            value = values.get(name)
            if isinstance(value, (list, tuple)) and len(value) == num_layers:
                setattr(config, name, type(value)(value[i] for i in keep))
        for name in _INDEX_FIELDS:
            value = values.get(name)
            if isinstance(value, (list, tuple)):
                setattr(config, name, type(value)(new_index[i] for i in value if i in new_index))


def _remove(model: nn.Module, indices: Iterable[int], what: str) -> None:
    dmap = find_decoder(model)
    num = len(dmap)
    removed = set(_normalise(indices, num, what))
    if not removed:
        return
    keep = [i for i in range(num) if i not in removed]
    blocks = [dmap.layers[i] for i in keep]
    del dmap.layers[:]
    dmap.layers.extend(blocks)
    for new, block in enumerate(blocks):
        for module in _layer_idx_modules(block):
            module.layer_idx = new
    _update_configs(_configs(model), num, keep)


def remove_layers(model: nn.Module, indices: Iterable[int]) -> nn.Module:
    """Delete decoder blocks `indices` (0-based, of the current model) in place; returns `model`.

    `indices` are distinct integers in [0, L) (Python, NumPy or 0-d integer tensors); a float,
    a bool, a repeated or an out-of-range index is a ValueError, and the model is left unchanged.

    The remaining blocks keep their weights and order; every submodule's `layer_idx` is renumbered
    to the new position, `config.num_hidden_layers` (or `n_layer` / `n_layers` / `num_layers`)
    and the per-layer config lists `layer_types` / `no_rope_layers` / `mlp_only_layers` are
    updated, so the KV cache, `generate()` and `save_pretrained` -> `from_pretrained` work as for a
    model built with that many layers. No weights are copied.
    """
    _remove(model, indices, "remove_layers")
    return model


@contextlib.contextmanager
def skip_layers(model: nn.Module, indices: Iterable[int]) -> Iterator[nn.Module]:
    """Within the `with` block, blocks `indices` are skipped (each acts as the identity, h_{l+1} =
    h_l); on exit the model is restored exactly: same block objects in the same order, the same
    `layer_idx` values, the same config fields.

    Implemented as a temporary `remove_layers`, not as identity hooks: a hooked-out block would
    still own a KV-cache slot that nobody fills (HF reads the cached length from slot 0), and it
    would still spend its compute. No weights are copied.
    """
    dmap = find_decoder(model)
    blocks = list(dmap.layers)
    layer_idx = [(m, m.layer_idx) for block in blocks for m in _layer_idx_modules(block)]
    snapshot = _config_snapshot(_configs(model))
    try:
        _remove(model, indices, "skip_layers")
        yield model
    finally:
        del dmap.layers[:]
        dmap.layers.extend(blocks)
        for module, value in layer_idx:
            module.layer_idx = value
        for config, values in snapshot:
            for name, value in values.items():
                setattr(config, name, value)
