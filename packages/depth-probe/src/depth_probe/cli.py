"""The `depth-probe` command: a depth report of a saved Hugging Face model on a text file.

    depth-probe --model DIR --text FILE --out DIR [--max-length 128] [--rows 8]
                [--sweep] [--skip-effect] [--qa QA.jsonl] [--max-new-tokens 8]

`--sweep` adds removal sweeps scored by perplexity on held-out windows of the same text; `--qa`
(JSON lines {"prompt": ..., "answer": ...}) adds greedy exact match, the generation protocol.

A mistake in the arguments (no model folder there, a missing text file, a bad JSON line, a
tokenizer larger than the model's vocabulary) prints one line, `depth-probe: error: <what>:
<fix>`, and exits with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from layerwise_core import (
    MissingPathError,
    UsageError,
    check_tokenizer_fits,
    error_line,
    load_tokenizer_folder,
    read_json_lines,
    require_model_folder,
    warn_renamed,
)
from layerwise_core.command_line import HelpFormatter

__all__ = ["add_report_arguments", "load_model", "main", "text_windows"]


def load_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """The language model saved in `path`, as it was trained, in eval mode.

    `layerwise_core.load_pretrained`: the Auto classes, after importing the package that registers
    the saved model type (ln_scaling for LNS / Mix-LN, coe_moe for CoE, core's masked-diffusion
    Llama), so depth-probe needs none of them installed unless the model does. A missing package is
    a `UsageError` that names the `pip install`.
    """
    from layerwise_core import load_pretrained

    try:
        return load_pretrained(path, dtype=dtype)
    except ImportError as err:
        raise UsageError(str(err)) from err


def text_windows(tokenizer, text: str, length: int, count: int, skip: int = 0) -> list[str]:
    """`count` consecutive windows of `length` tokens of `text` (after `skip` windows), as text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = []
    for start in range(skip * length, len(ids) - length + 1, length):
        windows.append(tokenizer.decode(ids[start : start + length]))
        if len(windows) == count:
            break
    if not windows:
        raise UsageError(
            f"the text has {len(ids)} tokens, fewer than the {length * (skip + 1)} needed: give "
            "more text or lower --max-length / --rows"
        )
    return windows


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a depth report that `depth-probe` and `layerwise probe` share (one definition,
    so their names, defaults and help cannot drift apart)."""
    parser.add_argument("--out", required=True, help="report folder (JSON, markdown, PNG figures)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per window")
    parser.add_argument(
        "--rows", type=int, default=8, help="windows analysed (and as many held out for sweeps)"
    )
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="removal sweeps, perplexity-scored on as many held-out windows",
    )
    parser.add_argument(
        "--skip-effect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="add Csordas et al.'s skip effect (L+1 passes)",
    )


def _parser() -> argparse.ArgumentParser:
    # the flags shared with `layerwise probe` have its names and defaults (a test checks)
    parser = argparse.ArgumentParser(
        prog="depth-probe", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="Hugging Face model folder (required), e.g. RUN/final"
    )
    # deprecated: the model folder as a positional argument (depth-probe <= 0.1)
    parser.add_argument("model_path", nargs="?", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--text", required=True, action="append", help="UTF-8 text file (repeatable)"
    )
    add_report_arguments(parser)
    parser.add_argument(
        "--qa", default=None, help='JSON lines {"prompt", "answer"}: exact-match sweeps'
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=8, help="greedy tokens generated per --qa prompt"
    )
    parser.add_argument("--title", default=None, help="report title (default: from the model)")
    parser.add_argument(
        "--figures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PNG figures beside the JSON and markdown",
    )
    return parser


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; the old positional MODEL still works (with a FutureWarning) for one release."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.model_path is not None:
        if args.model is not None:
            parser.error("give the model folder once, as --model DIR")
        warn_renamed("depth-probe", "MODEL (positional)", "--model MODEL", stacklevel=3)
        args.model = args.model_path
    if args.model is None:
        parser.error("the following arguments are required: --model")
    del args.model_path
    return args


def _qa_rows(path: str) -> list[dict]:
    rows = read_json_lines(path, "--qa")
    for number, row in rows:
        if not isinstance(row.get("prompt"), str) or "answer" not in row:
            raise UsageError(
                f'{path}:{number}: expected {{"prompt": "...", "answer": ...}}, got keys '
                f"{sorted(row)}: give every line a string prompt and an answer"
            )
    if not rows:
        raise UsageError(f"--qa {path!r} holds no questions: add JSON lines or drop --qa")
    return [row for _, row in rows]


def _read_texts(paths: Sequence[str]) -> str:
    for path in paths:
        if not Path(path).is_file():
            raise MissingPathError(f"--text {path!r} does not exist: pass a UTF-8 text file")
    return "\n\n".join(Path(p).read_text(encoding="utf-8") for p in paths)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; a user error prints one line on stderr and returns 2 (nothing written)."""
    args = _parse_args(argv)
    try:
        return _run(args, argv)
    except UsageError as err:
        print(error_line("depth-probe", err), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from depth_probe.report import encode_texts, report
    from depth_probe.scoring import ExactMatchScorer, PerplexityScorer

    # every input is checked before the model loads and before the report folder is made
    require_model_folder(args.model, "--model")
    text = _read_texts(args.text)
    qa = _qa_rows(args.qa) if args.qa else None
    if args.tokenizer:
        tokenizer = load_tokenizer_folder(args.tokenizer, "--tokenizer")
    else:
        tokenizer = load_tokenizer_folder(
            args.model, "--model", "save its tokenizer there or pass --tokenizer FOLDER"
        )
    check_tokenizer_fits(
        tokenizer,
        args.model,  # its config.json: checked before the weights load
        tokenizer_name=f"--tokenizer {args.tokenizer!r}" if args.tokenizer else "the tokenizer",
        fix="pass --tokenizer with the tokenizer the model was trained with",
    )
    texts = text_windows(tokenizer, text, args.max_length, args.rows)
    held = None
    if args.sweep:
        held = text_windows(tokenizer, text, args.max_length, args.rows, skip=args.rows)
    model = load_model(args.model)
    scorers = []
    if held is not None:
        ids, mask = encode_texts(tokenizer, held, args.max_length)
        scorers.append(PerplexityScorer(ids, mask))
    if qa is not None:
        scorers.append(
            ExactMatchScorer(
                tokenizer,
                [r["prompt"] for r in qa],
                [str(r["answer"]) for r in qa],
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
        figures=args.figures,
        with_skip_effect=args.skip_effect,
    )
    for path in result.files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
