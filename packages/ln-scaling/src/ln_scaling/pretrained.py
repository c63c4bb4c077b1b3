"""Save / load of LNS and Mix-LN models: the scheme lives in the model config, and `save_pretrained`
writes it as model type "ln_scaling" (`ln_scaling.scheme_config`), so after `import ln_scaling`
both `AutoModelForCausalLM.from_pretrained(path)` and `ln_scaling.from_pretrained(path)` reload the
same model (logits equal)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from layerwise_core import auto_model_class, import_model_packages
from ln_scaling.config import SCHEMES, NormConfig
from ln_scaling.scheme_config import LNS_CONFIG_KEY, MIX_LN_CONFIG_KEY, record_scheme

__all__ = ["apply_norm_scheme", "from_pretrained", "norm_scheme"]


def norm_scheme(config: Any) -> str:
    """ "pre_ln", "lns", "mix_ln" or "mix_ln+lns", read from a model config."""
    mix = getattr(config, MIX_LN_CONFIG_KEY, None) is not None
    lns = bool(getattr(config, LNS_CONFIG_KEY, False))
    return {(False, False): "pre_ln", (False, True): "lns", (True, False): "mix_ln"}.get(
        (mix, lns), "mix_ln+lns"
    )


def apply_norm_scheme(model: nn.Module, scheme: str, post_ln_fraction: float = 0.25) -> nn.Module:
    """Apply a named scheme ("pre_ln" | "lns" | "mix_ln" | "mix_ln+lns") in place; returns `model`.

    The functional form of `NormConfig(scheme=scheme, post_ln_fraction=...).apply(model)`."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown norm scheme {scheme!r}; use {', '.join(SCHEMES)}")
    if not 0.0 <= post_ln_fraction <= 1.0:
        raise ValueError(f"post_ln_fraction must be in [0, 1], got {post_ln_fraction}")
    return NormConfig(scheme=scheme, post_ln_fraction=post_ln_fraction).apply(model)


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a language model saved with `save_pretrained`, with its recorded norm scheme.

    The Auto route: imports the package of a layerwise model type (`coe_moe`, ...), reads the
    config with `AutoConfig` and loads with `AutoModelForCausalLM` (or `AutoModelForMaskedLM` for
    masked-diffusion models); `kwargs` go to `from_pretrained` (dtype, device_map, ...). Also reads
    checkpoints of pre-release ln-scaling, which recorded the scheme in a stock config (model type
    "llama"): saving the result again writes the current format. Every Mix-LN norm must be in the
    checkpoint (a ValueError names the missing ones).
    """
    from transformers import AutoConfig

    import_model_packages(path)
    config = AutoConfig.from_pretrained(path)
    record_scheme(config)  # a pre-release checkpoint: the stock config with scheme keys
    return auto_model_class(config).from_pretrained(path, config=config, **kwargs)
