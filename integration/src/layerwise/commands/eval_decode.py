"""`layerwise eval decode --model DIR --prompts FILE.jsonl [decode=prophet ...]`: a
masked-diffusion LM answers prompts with a decoding strategy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layerwise.eval.decode import DecodeConfig, evaluate_decoding, read_prompts
from layerwise.models import load_model_and_tokenizer
from layerwise_core import UsageError

__all__ = ["CONFIG", "EXAMPLE", "add_arguments", "run"]

CONFIG = DecodeConfig
EXAMPLE = "decode=prophet decode.steps=32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, the prompts, an optional DecodeConfig file and overrides."""
    parser.add_argument(
        "--model", required=True, help="masked-diffusion model folder (mdm run final/)"
    )
    parser.add_argument("--prompts", required=True, help='JSON lines {"prompt", "answer"?}')
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    parser.add_argument("--config", default=None, help="DecodeConfig YAML file")
    parser.add_argument("--json", default=None, help="also write outputs and scores to this file")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. decode=prophet decode.steps=32"
    )


def run(args: argparse.Namespace) -> int:
    """Print each output, the mean NFE, tokens/s and the accuracy; --json also writes them."""
    if args.config:
        cfg = DecodeConfig.from_yaml(args.config, overrides=args.overrides)
    else:
        cfg = DecodeConfig.from_dict({}, overrides=args.overrides)
    prompts, answers = read_prompts(args.prompts)
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer)
    if getattr(model.config, "mask_token_id", None) is None:
        raise UsageError(
            f"--model {args.model!r} is not a masked-diffusion LM (its config has no "
            "mask_token_id): decode a model trained with objective=mdm"
        )
    report = evaluate_decoding(model, tokenizer, prompts, answers, cfg)
    for i, output in enumerate(report.outputs):
        verdict = "" if report.correct is None else (" ok" if report.correct[i] else " x")
        print(f"[{i}] nfe {report.nfe[i]}, {report.row_wall_s[i]:.3f} s{verdict}: {output!r}")
    line = (
        f"decode={cfg.decode.name}: mean NFE {report.mean_nfe:.1f}, "
        f"{report.tokens_per_second:.1f} tokens/s"
    )
    if report.accuracy is not None:
        line += f", accuracy {report.accuracy:.1%} ({sum(report.correct)}/{len(report.correct)})"
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=1))
    return 0
