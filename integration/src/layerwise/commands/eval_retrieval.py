"""`layerwise eval retrieval --model DIR`: key-value retrieval (needle) exact match by context
length and depth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layerwise.eval.retrieval import evaluate_pretrained

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = None
EXAMPLE = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the haystack corpus and the grid of contexts and depths."""
    parser.add_argument("--model", required=True, help="Hugging Face model folder, e.g. RUN/final")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    parser.add_argument(
        "--source", default="shakespeare", help="corpus whose validation text is the haystack"
    )
    parser.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        default=[128, 256],
        metavar="TOKENS",
        help="context lengths (document + query tokens)",
    )
    parser.add_argument(
        "--depths",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        metavar="D",
        help="where the queried fact sits in the document (0 = start, 1 = end)",
    )
    parser.add_argument("--per-cell", type=int, default=20, help="examples per (context, depth)")
    parser.add_argument("--pairs", type=int, default=1, help="facts per document (1 = one needle)")
    parser.add_argument("--digits", type=int, default=3, help="digits per value")
    parser.add_argument("--seed", type=int, default=0, help="seed of the facts and their placement")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")


def run(args: argparse.Namespace) -> int:
    """Print the table and the exact match; --json also writes the report."""
    report = evaluate_pretrained(
        args.model,
        tokenizer_path=args.tokenizer,
        source=args.source,
        context_lengths=args.contexts,
        depths=args.depths,
        per_cell=args.per_cell,
        num_pairs=args.pairs,
        value_digits=args.digits,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    print(report.table())
    print(
        f"exact match {100 * report.accuracy:.1f}%, answer NLL {report.answer_nll:.3f} nats/token"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=1))
    return 0
