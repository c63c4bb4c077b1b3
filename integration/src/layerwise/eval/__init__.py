"""Evaluation of trained models."""

from layerwise.eval.perplexity import PerplexityResult, next_token_loss, perplexity

__all__ = ["PerplexityResult", "next_token_loss", "perplexity"]
