"""`layerwise quickstart`: real corpus -> tokenizer -> small Llama trained on CPU -> report."""

from __future__ import annotations

import argparse

from layerwise.quickstart import QuickstartConfig, run_quickstart

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = QuickstartConfig
EXAMPLE = "base.train.steps=50"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--out, --config (optional: the built-in recipe), overrides, --overwrite."""
    parser.add_argument(
        "--out", default="runs/quickstart", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--config", default=None, help="a QuickstartConfig YAML (default: the built-in recipe)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="QuickstartConfig overrides"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a quickstart already in --out"
    )


def run(args: argparse.Namespace) -> int:
    """Run the quickstart into --out."""
    if args.config:
        cfg = QuickstartConfig.from_yaml(args.config, overrides=args.overrides)
    else:
        cfg = QuickstartConfig.from_dict({}, overrides=args.overrides)
    run_quickstart(cfg, args.out, overwrite=args.overwrite)
    return 0
