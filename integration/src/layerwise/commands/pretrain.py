"""`layerwise pretrain --config FILE.yaml|RECIPE [KEY=VALUE ...]`: pre-train a Llama."""

from __future__ import annotations

import argparse

from layerwise.commands import config_file_arguments
from layerwise.recipes import resolve_config
from layerwise.train import PretrainConfig, pretrain
from layerwise_core import is_main_process

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = PretrainConfig
EXAMPLE = "train.steps=300 optimizer.lr=3e-3"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and overrides."""
    config_file_arguments(parser, CONFIG.__name__)


def run(args: argparse.Namespace) -> int:
    """Pre-train; the main process prints the final validation loss and perplexity."""
    # a file, or the name of a packaged recipe (layerwise.recipes: `--config lns-130m`)
    cfg = PretrainConfig.from_yaml(resolve_config(args.config), overrides=args.overrides)
    result = pretrain(cfg)
    if result.final_eval is not None and is_main_process():
        print(
            f"step {result.step}: validation loss {result.final_eval.loss:.4f}, "
            f"perplexity {result.final_eval.perplexity:.2f} ({result.out_dir})"
        )
    return 0
