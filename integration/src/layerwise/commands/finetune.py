"""`layerwise finetune --config FILE.yaml [KEY=VALUE ...]`: fine-tune a HF causal LM on
instruction JSON lines (full | lora | lift | seft)."""

from __future__ import annotations

import argparse

from layerwise.commands import config_file_arguments
from layerwise.finetune import FinetuneConfig, finetune

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = FinetuneConfig
EXAMPLE = "method=seft optimizer.lr=1e-4"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and overrides."""
    config_file_arguments(parser, CONFIG.__name__)


def run(args: argparse.Namespace) -> int:
    """Fine-tune; prints steps, trainable parameters, final loss and the math accuracy."""
    cfg = FinetuneConfig.from_yaml(args.config, overrides=args.overrides)
    result = finetune(cfg)
    line = (
        f"{result.method}: {result.steps} steps, {result.trainable_parameters:,} trainable "
        f"parameters, final loss {result.train_losses[-1]:.4f}"
    )
    if result.eval is not None:
        line += (
            f", math accuracy {result.eval.accuracy:.1%} "
            f"({result.eval.correct}/{result.eval.total})"
        )
    print(f"{line} ({result.out_dir})")
    return 0
