"""The `layerwise` command.

    layerwise quickstart [--out runs/quickstart] [--minutes 6] [a.b=c ...]
    layerwise pretrain --config FILE.yaml [a.b=c ...]
    layerwise eval retrieval --model DIR [--contexts 128 256] [--depths 0 0.5 1] [--json OUT]
    layerwise eval decode --model DIR --prompts FILE.jsonl [--config FILE.yaml] [decode=prophet ...]
    layerwise probe --model DIR --out DIR [--source shakespeare] [--max-length 128] [--rows 8]

Overrides are dotted `key=value` pairs applied on top of the YAML file (values parse as YAML
scalars: `train.steps=300`, `optim.betas=[0.9,0.95]`, `train.resume=true`).

Exit status: 0 done; 2 a user error (a bad config value or path, a malformed file, a run folder
in use or already holding a run, a resume that would change the run), reported on one line as
`layerwise: error: <what>: <fix>` before anything is written; 3 training diverged (a NaN / inf
loss: the run stops before applying that step and keeps its last good checkpoint). Any other
failure is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from layerwise_core.command_line import HelpFormatter

__all__ = ["main"]

# The top-level keys of each command's config (sections hold nested keys; a test keeps these lists
# equal to the pydantic models): (class, import path, source file, sections, values, example).
_CONFIG_KEYS = {
    "pretrain": (
        "PretrainConfig",
        "layerwise.train",
        "layerwise/train/config.py",
        ["data", "model", "optim", "train", "spam", "stable_spam", "spectral_options"],
        ["objective", "mask_ratio", "mask_mode", "optimizer", "spectral"],
        "train.steps=300 optim.lr=3e-3",
    ),
    "finetune": (
        "FinetuneConfig",
        "layerwise.finetune",
        "layerwise/finetune/config.py",
        ["model", "data", "finetune", "optim", "train", "eval"],
        [],
        "finetune.method=seft optim.lr=1e-4",
    ),
    "quickstart": (
        "QuickstartConfig",
        "layerwise.quickstart",
        "layerwise/quickstart.py",
        ["base"],
        ["runs", "eval_all_validation", "depth_report", "depth_rows"],
        "base.train.steps=50",
    ),
    "eval decode": (
        "DecodeConfig",
        "layerwise.eval.decode",
        "layerwise/eval/decode.py",
        [],
        ["decode", "options", "gen_length", "batch_size", "scorer", "seed"],
        "decode=prophet options.steps=32",
    ),
}


def _config_help(command: str) -> str:
    """The --help epilog of a command that takes a config: its top-level keys and the reference."""
    cls, package, source, sections, values, example = _CONFIG_KEYS[command]
    lines = [f"config file ({cls}), top-level keys:"]
    if sections:
        lines.append(f"  sections: {', '.join(sections)}")
    if values:
        lines.append(f"  values:   {', '.join(values)}")
    lines += [
        f"overrides: dotted KEY=VALUE pairs, e.g. {example}",
        f"full reference (every key, its default and meaning): {cls} in {source};",
        f'the defaults as YAML: python -c "from {package} import {cls}; print({cls}().to_yaml())"',
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    from depth_probe.cli import add_report_arguments
    from layerwise.__about__ import __version__

    parser = argparse.ArgumentParser(
        prog="layerwise", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"layerwise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    quick = sub.add_parser(
        "quickstart",
        help="real corpus -> tokenizer -> small Llama trained on CPU -> report",
        formatter_class=HelpFormatter,
        epilog=_config_help("quickstart"),
    )
    quick.add_argument(
        "--out", default="runs/quickstart", help="output folder (default: %(default)s)"
    )
    quick.add_argument(
        "--config", default=None, help="a QuickstartConfig YAML (default: the built-in recipe)"
    )
    quick.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="QuickstartConfig overrides"
    )
    quick.add_argument(
        "--overwrite", action="store_true", help="replace a quickstart already in --out"
    )

    pre = sub.add_parser(
        "pretrain",
        help="pre-train a Llama from a YAML config",
        formatter_class=HelpFormatter,
        epilog=_config_help("pretrain"),
    )
    pre.add_argument("--config", required=True, help="PretrainConfig YAML file")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    fin = sub.add_parser(
        "finetune",
        help="fine-tune a HF causal LM on instruction jsonl: full | lora | lift | seft",
        formatter_class=HelpFormatter,
        epilog=_config_help("finetune"),
    )
    fin.add_argument("--config", required=True, help="FinetuneConfig YAML file")
    fin.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    ev = sub.add_parser("eval", help="evaluate a saved model", formatter_class=HelpFormatter)
    tasks = ev.add_subparsers(dest="task", required=True, metavar="TASK")
    ret = tasks.add_parser(
        "retrieval",
        help="key-value retrieval (needle) exact match by context length and depth",
        formatter_class=HelpFormatter,
    )
    ret.add_argument("--model", required=True, help="Hugging Face model folder, e.g. RUN/final")
    ret.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    ret.add_argument(
        "--source", default="shakespeare", help="corpus whose validation text is the haystack"
    )
    ret.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        default=[128, 256],
        metavar="TOKENS",
        help="context lengths (document + query tokens)",
    )
    ret.add_argument(
        "--depths",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        metavar="D",
        help="where the queried fact sits in the document (0 = start, 1 = end)",
    )
    ret.add_argument("--per-cell", type=int, default=20, help="examples per (context, depth)")
    ret.add_argument("--pairs", type=int, default=1, help="facts per document (1 = one needle)")
    ret.add_argument("--digits", type=int, default=3, help="digits per value")
    ret.add_argument("--seed", type=int, default=0, help="seed of the facts and their placement")
    ret.add_argument("--batch-size", type=int, default=16, help="examples per forward pass")
    ret.add_argument("--json", default=None, help="also write the report as JSON to this file")

    dec = tasks.add_parser(
        "decode",
        help="masked-diffusion LM answers prompts: decode=llada|prophet|fast_dllm|...",
        formatter_class=HelpFormatter,
        epilog=_config_help("eval decode"),
    )
    dec.add_argument(
        "--model", required=True, help="masked-diffusion model folder (mdm run final/)"
    )
    dec.add_argument("--prompts", required=True, help='JSON lines {"prompt", "answer"?}')
    dec.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    dec.add_argument("--config", default=None, help="DecodeConfig YAML file")
    dec.add_argument("--json", default=None, help="also write outputs and scores to this file")
    dec.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. decode=prophet options.steps=32"
    )

    # the report flags are depth-probe's own definition (a test checks the rest agrees)
    probe = sub.add_parser(
        "probe",
        help="depth-probe report of a saved model on a corpus's validation text",
        formatter_class=HelpFormatter,
    )
    probe.add_argument("--model", required=True, help="Hugging Face model folder, e.g. RUN/final")
    add_report_arguments(probe)  # shared with the depth-probe command
    probe.add_argument(
        "--source", default="shakespeare", help="corpus whose validation text is analysed"
    )
    probe.add_argument(
        "--overwrite", action="store_true", help="replace a depth report already in --out"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    from layerwise.train.divergence import DIVERGED_EXIT_STATUS, TrainingDivergedError
    from layerwise_core import UsageError, error_line

    try:
        if args.command == "pretrain":
            from layerwise.train import PretrainConfig, pretrain

            cfg = PretrainConfig.from_yaml(args.config, overrides=args.overrides)
            from layerwise_core import is_main_process

            result = pretrain(cfg)
            if result.final_eval is not None and is_main_process():
                print(
                    f"step {result.step}: validation loss {result.final_eval.loss:.4f}, "
                    f"perplexity {result.final_eval.perplexity:.2f} ({result.out_dir})"
                )
            return 0
        if args.command == "finetune":
            from layerwise.finetune import FinetuneConfig, finetune

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
        if args.command == "eval" and args.task == "retrieval":
            import json
            from pathlib import Path

            from layerwise.eval.retrieval import evaluate_pretrained

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
                f"exact match {100 * report.accuracy:.1f}%, "
                f"answer NLL {report.answer_nll:.3f} nats/token"
            )
            if args.json:
                Path(args.json).write_text(json.dumps(report.as_dict(), indent=1))
            return 0
        if args.command == "eval" and args.task == "decode":
            return _eval_decode(args)
        if args.command == "probe":
            import shlex

            from layerwise.eval.depth import probe_saved_model

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
                command="layerwise " + shlex.join(sys.argv[1:] if argv is None else argv),
            )
            influence = ", ".join(f"{v:.3f}" for v in result.probe.block_influence.tolist())
            print(f"block influence per layer: {influence}")
            print(f"report: {result.out_dir / 'depth_probe.md'}")
            return 0
        if args.command == "quickstart":
            from layerwise.quickstart import QuickstartConfig, run_quickstart

            if args.config:
                cfg = QuickstartConfig.from_yaml(args.config, overrides=args.overrides)
            else:
                cfg = QuickstartConfig.from_dict({}, overrides=args.overrides)
            run_quickstart(cfg, args.out, overwrite=args.overwrite)
            return 0
    except UsageError as err:  # config errors, missing paths, malformed files, a run folder in
        # use or holding a run, a resume that would change the run, a refused checkpoint file
        print(error_line("layerwise", err), file=sys.stderr)
        return 2
    except TrainingDivergedError as err:  # NaN / inf loss; the last good checkpoint is kept
        print(error_line("layerwise", err), file=sys.stderr)
        return DIVERGED_EXIT_STATUS
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse admits no other


def _eval_decode(args) -> int:
    import json
    from pathlib import Path

    from layerwise.eval.decode import DecodeConfig, evaluate_decoding, read_prompts
    from layerwise.train.model import load_model_and_tokenizer
    from layerwise_core import UsageError

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
        print(f"[{i}] nfe {report.nfe[i]}{verdict}: {output!r}")
    line = f"decode={cfg.decode}: mean NFE {report.mean_nfe:.1f}, {report.tokens_per_second:.1f} tokens/s"
    if report.accuracy is not None:
        line += f", accuracy {report.accuracy:.1%} ({sum(report.correct)}/{len(report.correct)})"
    print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
