"""Saved models of the layerwise packages and the Auto classes: which package registers which model
type, and one loader that imports it first.

A checkpoint whose architecture is not stock transformers carries its own `model_type` in
config.json, and the package that defines it registers that type with `AutoConfig` and the
`AutoModelFor...` classes on import (no `auto_map`, no `trust_remote_code`):

    model_type                        import                               pip install
    ln_scaling                        ln_scaling                           ln-scaling
    coe                               coe_moe                              coe-moe
    elas_llama                        sparse_ft                            sparse-ft
    multi_head_llama                  sparse_ft                            sparse-ft
    llada, Dream                      dlm_decode                           dlm-decode
    layerwise_bidirectional_llama     layerwise_core.bidirectional_llama   'layerwise-core[hf]'

So `import ln_scaling` (say) before `AutoModelForCausalLM.from_pretrained(path)` gives the model as
trained; without it transformers refuses the unknown model type instead of loading a different
model. `load_pretrained(path)` reads config.json, imports what it names (a clear ImportError
naming the `pip install` if that package is missing) and loads through the Auto classes; tools
that must not import method packages directly (the `depth-probe` CLI) load models with it.

A wrapper type records the model type it wraps under `base_model_type` (LayerNorm Scaling of a
masked-diffusion or CoE model): its package is imported too.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise_core.errors import UsageError

__all__ = [
    "BASE_MODEL_TYPE_KEY",
    "MODEL_PACKAGES",
    "ModelPackage",
    "auto_model_class",
    "import_model_packages",
    "load_pretrained",
]

BASE_MODEL_TYPE_KEY = "base_model_type"  # config.json key of a wrapper type: the type it wraps


@dataclass(frozen=True)
class ModelPackage:
    """The package whose import registers a model type with the Auto classes."""

    module: str  # imported to register the type
    distribution: str  # what to `pip install`
    description: str  # what the checkpoint is, for messages


MODEL_PACKAGES: dict[str, ModelPackage] = {
    "ln_scaling": ModelPackage("ln_scaling", "ln-scaling", "LayerNorm Scaling / Mix-LN"),
    "coe": ModelPackage("coe_moe", "coe-moe", "Chain-of-Experts / MoE"),
    "elas_llama": ModelPackage("sparse_ft", "sparse-ft", "ELAS (low-rank, 2:4 squared-ReLU) Llama"),
    "multi_head_llama": ModelPackage(
        "sparse_ft", "sparse-ft", "NeuroTrails / TreeNet multi-head (or ensemble) Llama"
    ),
    "llada": ModelPackage("dlm_decode", "dlm-decode", "LLaDA masked-diffusion LM"),
    "Dream": ModelPackage("dlm_decode", "dlm-decode", "Dream masked-diffusion LM"),
    "layerwise_bidirectional_llama": ModelPackage(
        "layerwise_core.bidirectional_llama",
        "'layerwise-core[hf]'",
        "masked-diffusion (bidirectional) Llama",
    ),
}

# config.json keys that pre-release ln-scaling wrote into a stock config (model_type "llama"): the
# Auto classes load such a checkpoint without its scheme, so loaders refuse it and name the upgrade.
_LEGACY_SCHEME_KEYS = ("layernorm_scaling", "mix_ln_post_layers")


def _config_dict(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), "the checkpoint"
    path = Path(source)
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise FileNotFoundError(
                f"{path} has no config.json, so it is not a saved Hugging Face model: pass the "
                "folder that save_pretrained wrote"
            )
        return json.loads(file.read_text()), str(path)
    from transformers import PreTrainedConfig  # a hub id: transformers finds its config.json

    return PreTrainedConfig.get_config_dict(str(source))[0], str(source)


def import_model_packages(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Import the packages that register the saved model's type (and the type it wraps) with the
    Auto classes; returns the config.json dict. `source`: a model folder, a hub id or that dict.

    Raises:
        ImportError: the model type is a layerwise package's and that package is not installed.
    """
    config, name = _config_dict(source)
    for model_type in (config.get(BASE_MODEL_TYPE_KEY), config.get("model_type")):
        package = MODEL_PACKAGES.get(model_type)
        if package is None:
            continue
        try:
            importlib.import_module(package.module)
        except ImportError as err:
            raise ImportError(
                f"{name} is a {package.description} model (model_type {model_type!r}): "
                f"`pip install {package.distribution}` and `import {package.module}` before "
                f"loading it ({err})"
            ) from err
    return config


def _refuse_legacy_scheme(config: Mapping[str, Any], name: str) -> None:
    keys = [k for k in _LEGACY_SCHEME_KEYS if config.get(k) not in (None, False)]
    if keys and config.get("model_type") != "ln_scaling":
        raise UsageError(
            f"{name} records {', '.join(keys)} in a plain {config.get('model_type')!r} config "
            "(saved by a pre-release ln-scaling), which the Auto classes would load without its norm "
            "scheme: upgrade it once with `import ln_scaling; "
            "ln_scaling.from_pretrained(path).save_pretrained(path)`"
        )


def auto_model_class(config: Any):
    """The Auto class that builds the full language model of `config`: `AutoModelForCausalLM`, or
    `AutoModelForMaskedLM` for masked-diffusion models (registered only there)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    for auto in (AutoModelForCausalLM, AutoModelForMaskedLM):
        if type(config) in auto._model_mapping:
            return auto
    raise ValueError(
        f"no causal or masked language model is registered for {type(config).__name__} "
        f"(model_type {config.model_type!r}): import the package that defines it first"
    )


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    auto_class: Any = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """A saved language model through the Auto classes, as it was trained, in eval mode.

    Imports the package its model type needs (`import_model_packages`), then loads it with
    `auto_class.from_pretrained(path, dtype=dtype, **kwargs)`; `auto_class` defaults to
    `auto_model_class(config)` (pass `AutoModelForCausalLM` to refuse masked-diffusion models).

    Raises:
        ImportError: the model type's package is not installed (the message names it).
        UsageError: a checkpoint of pre-release ln-scaling (scheme keys in a stock config); the
            message gives the command that upgrades it.
    """
    from transformers import AutoConfig

    config_dict = import_model_packages(path)
    _refuse_legacy_scheme(config_dict, str(path))
    config = AutoConfig.from_pretrained(path)
    auto = auto_class or auto_model_class(config)
    model = auto.from_pretrained(path, config=config, dtype=dtype, **kwargs)
    return model.eval()
