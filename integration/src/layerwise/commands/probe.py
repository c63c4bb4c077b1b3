"""`layerwise probe --model DIR --out DIR`: the depth-probe report of a saved model on a corpus's
validation text."""

from __future__ import annotations

import argparse
import shlex

from depth_probe.cli import add_report_arguments
from layerwise.eval.depth import probe_saved_model

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = None
EXAMPLE = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, depth-probe's report flags, --source, --overwrite."""
    parser.add_argument("--model", required=True, help="Hugging Face model folder, e.g. RUN/final")
    add_report_arguments(parser)  # depth-probe's own definition (a test checks the rest agrees)
    parser.add_argument(
        "--source", default="shakespeare", help="corpus whose validation text is analysed"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a depth report already in --out"
    )


def run(args: argparse.Namespace) -> int:
    """Write the report to --out; print the block influence per layer and the report's path."""
    result = probe_saved_model(
        args.model,
        args.out,
        tokenizer_path=args.tokenizer,
        source=args.source,
        max_length=args.max_length,
        rows=args.rows,
        sweep=args.sweep,
        skip_effect=args.skip_effect,
        overwrite=args.overwrite,
        command="layerwise " + shlex.join(args.argv),
    )
    influence = ", ".join(f"{v:.3f}" for v in result.probe.block_influence.tolist())
    print(f"block influence per layer: {influence}")
    print(f"report: {result.out_dir / 'depth_probe.md'}")
    return 0
