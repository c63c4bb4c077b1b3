"""The `depth-probe` command: a depth report of a saved Hugging Face model on a text file.

    depth-probe MODEL_PATH --text FILE --out DIR [--max-length 256] [--rows 8]
                [--sweep] [--qa QA.jsonl] [--max-new-tokens 8]

`--sweep` adds removal sweeps scored by perplexity on held-out windows of the same text; `--qa`
(JSON lines {"prompt": ..., "answer": ...}) adds greedy exact match, the generation protocol.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["load_model", "main", "text_windows"]


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """A causal LM, or core's masked-diffusion test model (config with `logit_shift`), from `path`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    import layerwise_core.tiny_models as tiny_models

    tiny_models.BidirectionalLlamaConfig  # noqa: B018 - registers it with the Auto classes
    config = AutoConfig.from_pretrained(path)
    auto = (
        AutoModelForMaskedLM
        if getattr(config, "logit_shift", None) is not None
        else AutoModelForCausalLM
    )
    return auto.from_pretrained(path, dtype=dtype).eval()


def text_windows(tokenizer, text: str, length: int, count: int, skip: int = 0) -> list[str]:
    """`count` consecutive windows of `length` tokens of `text` (after `skip` windows), as text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = []
    for start in range(skip * length, len(ids) - length + 1, length):
        windows.append(tokenizer.decode(ids[start : start + length]))
        if len(windows) == count:
            break
    if not windows:
        raise ValueError(
            f"the text has fewer than {length * (skip + 1)} tokens; lower --max-length"
        )
    return windows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depth-probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="Hugging Face model folder")
    parser.add_argument(
        "--text", required=True, action="append", help="UTF-8 text file (repeatable)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per window")
    parser.add_argument(
        "--rows", type=int, default=8, help="windows analysed (and held out for --sweep)"
    )
    parser.add_argument("--sweep", action="store_true", help="removal sweeps, perplexity-scored")
    parser.add_argument(
        "--qa", default=None, help='JSON lines {"prompt", "answer"}: exact-match sweeps'
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--title", default=None)
    parser.add_argument("--no-figures", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from transformers import AutoTokenizer

    from depth_probe.report import encode_texts, report
    from depth_probe.scoring import ExactMatchScorer, PerplexityScorer

    model = load_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    text = "\n\n".join(Path(p).read_text(encoding="utf-8") for p in args.text)
    texts = text_windows(tokenizer, text, args.max_length, args.rows)
    scorers = []
    if args.sweep:
        held = text_windows(tokenizer, text, args.max_length, args.rows, skip=args.rows)
        ids, mask = encode_texts(tokenizer, held, args.max_length)
        scorers.append(PerplexityScorer(ids, mask))
    if args.qa:
        rows = [json.loads(line) for line in Path(args.qa).read_text().splitlines() if line.strip()]
        scorers.append(
            ExactMatchScorer(
                tokenizer,
                [r["prompt"] for r in rows],
                [str(r["answer"]) for r in rows],
                max_new_tokens=args.max_new_tokens,
            )
        )
    result = report(
        model,
        tokenizer,
        texts,
        args.out,
        max_length=args.max_length,
        scorers=scorers or None,
        title=args.title or f"Depth report: {Path(args.model).name}",
        command="depth-probe " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        figures=not args.no_figures,
    )
    for path in result.files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
