"""Saved models, loaded as they were trained: a run's `final/` folder or any Hugging Face folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from torch import nn

from layerwise.models.config import ModelConfig
from layerwise_core import (
    ConfigError,
    check_tokenizer_fits,
    load_tokenizer_folder,
    require_model_folder,
)
from ln_scaling import from_pretrained

__all__ = ["load_model_and_tokenizer", "load_saved_model", "load_trained_model"]


def load_trained_model(folder, cfg: ModelConfig):
    """Reload a run's saved `final/` model as it was trained: its architecture and norm scheme
    through the Auto classes (`ln_scaling.from_pretrained`) and the fake quantisation of
    `cfg.quant`, which the saved weights do not record."""
    return cfg.quant.apply(from_pretrained(folder))


def _run_model_config(folder: Path) -> ModelConfig | None:
    """The `model` section of the layerwise run that wrote `folder` (its `final/`), else None."""
    run = folder.parent
    if folder.name != "final" or not (run / "config.yaml").is_file():
        return None
    if not (run / "metrics.jsonl").is_file():
        return None
    try:
        data = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(
            f"{run / 'config.yaml'} is not valid YAML ({err}): restore the run's config.yaml"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("model", {}), dict):
        raise ConfigError(
            f"{run / 'config.yaml'} holds no `model:` section: restore the run's config.yaml"
        )
    return ModelConfig.from_dict(data.get("model") or {})


def load_saved_model(path: str | Path, what: str = "model") -> nn.Module:
    """A saved model in eval mode, as it was trained.

    - a layerwise run's `RUN/final`: `load_trained_model` with the run's `model` config (adds the
      fake quantisation of `model.quant`);
    - any other folder: `ln_scaling.from_pretrained`, the Auto route after importing the package
      its model type needs (LNS / Mix-LN, CoE, masked-diffusion models), which also reads
      checkpoints saved by pre-release ln-scaling.
    """
    # not a saved model folder (nothing there, no config.json, a hub id): a MissingPathError
    # naming `what` ("--model") and the fix
    folder = require_model_folder(path, what)
    model_cfg = _run_model_config(folder)
    if model_cfg is not None:
        return load_trained_model(folder, model_cfg).eval()
    return from_pretrained(folder).eval()


def load_model_and_tokenizer(
    model_path: str | Path, tokenizer_path: str | Path | None = None
) -> tuple[nn.Module, Any]:
    """`load_saved_model(model_path)` and its tokenizer (`tokenizer_path`, default the model's
    folder), every input checked before the weights load: the model folder (a hub id is refused
    with how to download it), the tokenizer folder, and a tokenizer no larger than the model's
    vocabulary. Errors are `UsageError`s naming `--model` / `--tokenizer` and the fix."""
    folder = require_model_folder(model_path, "--model")
    if tokenizer_path is None:
        tokenizer = load_tokenizer_folder(
            folder, "--model", "save the tokenizer there, or pass --tokenizer FOLDER"
        )
        name = "the tokenizer in the --model folder"
    else:
        tokenizer = load_tokenizer_folder(tokenizer_path, "--tokenizer")
        name = f"--tokenizer {str(tokenizer_path)!r}"
    check_tokenizer_fits(
        tokenizer,
        folder,  # its config.json: checked before the weights load
        tokenizer_name=name,
        fix="pass the tokenizer the model was trained with (--tokenizer; default: the model's)",
    )
    return load_saved_model(folder, "--model"), tokenizer
