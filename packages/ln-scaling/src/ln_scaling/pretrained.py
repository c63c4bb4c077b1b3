"""Save / load of LNS and Mix-LN models: the scheme lives in the model config, so a checkpoint written
by `save_pretrained` reloads as the same model (logits equal) with `ln_scaling.from_pretrained`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ln_scaling.layernorm_scaling import CONFIG_KEY as LNS_KEY
from ln_scaling.layernorm_scaling import apply_layernorm_scaling
from ln_scaling.mix_ln import CONFIG_KEY as MIX_KEY
from ln_scaling.mix_ln import apply_mix_ln

__all__ = ["apply_norm_scheme", "from_pretrained", "norm_scheme"]


def norm_scheme(config: Any) -> str:
    """ "pre_ln", "lns", "mix_ln" or "mix_ln+lns", read from a model config."""
    mix = getattr(config, MIX_KEY, None) is not None
    lns = bool(getattr(config, LNS_KEY, False))
    return {(False, False): "pre_ln", (False, True): "lns", (True, False): "mix_ln"}.get(
        (mix, lns), "mix_ln+lns"
    )


def apply_norm_scheme(model: nn.Module, scheme: str, post_ln_fraction: float = 0.25) -> nn.Module:
    """Apply a named scheme ("pre_ln" | "lns" | "mix_ln" | "mix_ln+lns") in place; returns `model`."""
    if scheme not in ("pre_ln", "lns", "mix_ln", "mix_ln+lns"):
        raise ValueError(f"unknown norm scheme {scheme!r}; use pre_ln, lns, mix_ln or mix_ln+lns")
    if scheme.startswith("mix_ln"):
        apply_mix_ln(model, post_ln_fraction)
    if scheme.endswith("lns"):
        apply_layernorm_scaling(model)
    return model


def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"ln_scaling.from_pretrained: no model.safetensors(.index.json) in {path}"
    )


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a causal LM saved with `save_pretrained` and re-apply its recorded norm scheme.

    `kwargs` go to `AutoModelForCausalLM.from_pretrained` (dtype, device_map, ...). The extra
    Mix-LN norms, which the stock architecture does not have, are loaded from the checkpoint after
    the scheme has created them; every checkpoint tensor must find its parameter.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    post_layers = getattr(config, MIX_KEY, None)
    lns = bool(getattr(config, LNS_KEY, False))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the stock class would warn about the Mix-LN norms
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    for key in (MIX_KEY, LNS_KEY):
        if hasattr(model.config, key):
            delattr(model.config, key)
    if post_layers is not None:
        apply_mix_ln(model, num_post_ln=int(post_layers))
        _load_missing(model, path)
    if lns:
        apply_layernorm_scaling(model)
    return model


@torch.no_grad()
def _load_missing(model: nn.Module, path: Path) -> None:
    params = dict(model.named_parameters())
    wanted = {n for n in params if ".post_feedforward_layernorm." in n}
    found: set[str] = set()
    for file in _checkpoint_files(path):
        with safe_open(str(file), framework="pt") as handle:
            for name in wanted & set(handle.keys()):
                params[name].copy_(handle.get_tensor(name))
                found.add(name)
    if found != wanted:
        raise ValueError(f"checkpoint {path} lacks the Mix-LN norms {sorted(wanted - found)[:4]}")
