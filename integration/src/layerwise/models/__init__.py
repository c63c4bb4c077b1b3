"""The models of layerwise runs: what a `model:` section builds (`build_model`) and how a saved
model is loaded back as it was trained (`load_saved_model`). Below `train` and `eval`, which
both use it; it knows nothing of training loops or distribution."""

from layerwise.models.build import build_model, init_model_weights
from layerwise.models.config import ModelConfig, QuantConfig
from layerwise.models.saved import load_model_and_tokenizer, load_saved_model, load_trained_model

__all__ = [
    "ModelConfig",
    "QuantConfig",
    "build_model",
    "init_model_weights",
    "load_model_and_tokenizer",
    "load_saved_model",
    "load_trained_model",
]
