"""Moved to `layerwise.models` (below train and eval); kept so that old imports keep working."""

from layerwise.models import (
    build_model,
    load_model_and_tokenizer,
    load_saved_model,
    load_trained_model,
)

__all__ = ["build_model", "load_model_and_tokenizer", "load_saved_model", "load_trained_model"]
