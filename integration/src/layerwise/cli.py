"""The `layerwise` command.

    layerwise quickstart [--out runs/quickstart] [--minutes 6] [a.b=c ...]
    layerwise pretrain --config FILE.yaml|RECIPE [a.b=c ...]   (RECIPE: docs/recipes.md)
    layerwise eval retrieval --model DIR [--contexts 128 256] [--depths 0 0.5 1] [--json OUT]
    layerwise eval decode --model DIR --prompts FILE.jsonl [--config FILE.yaml] [decode=prophet ...]
    layerwise probe --model DIR --out DIR [--source shakespeare] [--max-length 128] [--rows 8]

Overrides are dotted `key=value` pairs applied on top of the YAML file (values parse as YAML
scalars: `train.steps=300`, `optimizer.betas=[0.9,0.95]`, `train.resume=true`; a tagged
choice switches with `optimizer.name=spam` or `optimizer=spam`, see docs/architecture.md).

Exit status: 0 done; 2 a user error (a bad config value or path, a malformed file, a run folder
in use or already holding a run, a resume that would change the run), reported on one line as
`layerwise: error: <what>: <fix>` before anything is written; 3 training diverged (a NaN / inf
loss: the run stops before applying that step and keeps its last good checkpoint). Any other
failure is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from depth_probe.cli import add_report_arguments
from layerwise.__about__ import __version__
from layerwise.eval.decode import DecodeConfig, evaluate_decoding, read_prompts
from layerwise.eval.depth import probe_saved_model
from layerwise.eval.retrieval import evaluate_pretrained
from layerwise.finetune import FinetuneConfig, finetune
from layerwise.models import load_model_and_tokenizer
from layerwise.quickstart import QuickstartConfig, run_quickstart
from layerwise.recipes import resolve_config
from layerwise.train import PretrainConfig, pretrain
from layerwise.train.divergence import DIVERGED_EXIT_STATUS, TrainingDivergedError
from layerwise_core import (
    LayerwiseConfig,
    TaggedChoice,
    UsageError,
    error_line,
    is_main_process,
)
from layerwise_core.command_line import HelpFormatter

__all__ = ["SUBCOMMANDS", "Subcommand", "main"]


@dataclass(frozen=True)
class Subcommand:
    """One `layerwise` subcommand: where it sits, its flags, and what it runs."""

    path: tuple[str, ...]  # ("eval", "decode") for `layerwise eval decode`
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # returns the exit status
    config: type[LayerwiseConfig] | None = None  # the config its --config file holds
    example: str = ""  # example overrides, shown in --help (a test checks they are valid)


# groups of subcommands (`layerwise eval TASK`): their help
_GROUPS = {("eval",): "evaluate a saved model"}


# --- quickstart ------------------------------------------------------------------------------


def _quickstart_arguments(parser: argparse.ArgumentParser) -> None:
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


def _quickstart(args: argparse.Namespace) -> int:
    if args.config:
        cfg = QuickstartConfig.from_yaml(args.config, overrides=args.overrides)
    else:
        cfg = QuickstartConfig.from_dict({}, overrides=args.overrides)
    run_quickstart(cfg, args.out, overwrite=args.overwrite)
    return 0


# --- pretrain / finetune ---------------------------------------------------------------------


def _config_arguments(name: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help=f"{name} YAML file")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    return add


def _pretrain(args: argparse.Namespace) -> int:
    # a file, or the name of a packaged recipe (layerwise.recipes: `--config lns-130m`)
    cfg = PretrainConfig.from_yaml(resolve_config(args.config), overrides=args.overrides)
    result = pretrain(cfg)
    if result.final_eval is not None and is_main_process():
        print(
            f"step {result.step}: validation loss {result.final_eval.loss:.4f}, "
            f"perplexity {result.final_eval.perplexity:.2f} ({result.out_dir})"
        )
    return 0


def _finetune(args: argparse.Namespace) -> int:
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


# --- eval retrieval / eval decode ------------------------------------------------------------


def _retrieval_arguments(parser: argparse.ArgumentParser) -> None:
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


def _retrieval(args: argparse.Namespace) -> int:
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


def _decode_arguments(parser: argparse.ArgumentParser) -> None:
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


def _decode(args: argparse.Namespace) -> int:
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


# --- probe -----------------------------------------------------------------------------------


def _probe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder, e.g. RUN/final")
    add_report_arguments(parser)  # depth-probe's own definition (a test checks the rest agrees)
    parser.add_argument(
        "--source", default="shakespeare", help="corpus whose validation text is analysed"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a depth report already in --out"
    )


def _probe(args: argparse.Namespace) -> int:
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


SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        ("quickstart",),
        "real corpus -> tokenizer -> small Llama trained on CPU -> report",
        _quickstart_arguments,
        _quickstart,
        QuickstartConfig,
        "base.train.steps=50",
    ),
    Subcommand(
        ("pretrain",),
        "pre-train a Llama from a YAML config",
        _config_arguments("PretrainConfig"),
        _pretrain,
        PretrainConfig,
        "train.steps=300 optimizer.lr=3e-3",
    ),
    Subcommand(
        ("finetune",),
        "fine-tune a HF causal LM on instruction jsonl: full | lora | lift | seft",
        _config_arguments("FinetuneConfig"),
        _finetune,
        FinetuneConfig,
        "method=seft optimizer.lr=1e-4",
    ),
    Subcommand(
        ("eval", "retrieval"),
        "key-value retrieval (needle) exact match by context length and depth",
        _retrieval_arguments,
        _retrieval,
    ),
    Subcommand(
        ("eval", "decode"),
        "masked-diffusion LM answers prompts: decode=llada|prophet|fast_dllm|...",
        _decode_arguments,
        _decode,
        DecodeConfig,
        "decode=prophet decode.steps=32",
    ),
    Subcommand(
        ("probe",),
        "depth-probe report of a saved model on a corpus's validation text",
        _probe_arguments,
        _probe,
    ),
]


def config_keys(cls: type[LayerwiseConfig]) -> tuple[list[str], list[str]]:
    """(sections, values): the top-level keys of a config; a section holds nested keys (a
    config, or a tagged choice `{name: ..., ...}`)."""
    sections, values = [], []
    for key, field in cls.model_fields.items():
        nested = isinstance(field.annotation, type) and issubclass(
            field.annotation, LayerwiseConfig
        )
        tagged = any(isinstance(m, TaggedChoice) for m in field.metadata)
        (sections if nested or tagged else values).append(key)
    return sections, values


def _import_path(cls: type) -> str:
    """The shortest module path that exports `cls` (`layerwise.train` for PretrainConfig)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:end]))
        if getattr(module, cls.__name__, None) is cls:
            return ".".join(parts[:end])
    return cls.__module__


def _config_help(command: Subcommand) -> str:
    """The --help epilog of a command that takes a config: its top-level keys and the reference."""
    cls = command.config
    sections, values = config_keys(cls)
    package = _import_path(cls)
    source = cls.__module__.replace(".", "/") + ".py"
    lines = [f"config file ({cls.__name__}), top-level keys:"]
    if sections:
        lines.append(f"  sections: {', '.join(sections)}")
    if values:
        lines.append(f"  values:   {', '.join(values)}")
    lines += [
        f"overrides: dotted KEY=VALUE pairs, e.g. {command.example}",
        f"full reference (every key, its default and meaning): {cls.__name__} in {source};",
        f'the defaults as YAML: python -c "from {package} import {cls.__name__}; '
        f'print({cls.__name__}().to_yaml())"',
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerwise", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"layerwise {__version__}")
    groups = {(): parser.add_subparsers(dest="command", required=True, metavar="COMMAND")}
    for command in SUBCOMMANDS:
        for depth in range(1, len(command.path)):
            group = command.path[:depth]
            if group not in groups:  # `layerwise eval`: a subcommand holding subcommands
                holder = groups[group[:-1]].add_parser(
                    group[-1], help=_GROUPS[group], formatter_class=HelpFormatter
                )
                groups[group] = holder.add_subparsers(dest="task", required=True, metavar="TASK")
        sub = groups[command.path[:-1]].add_parser(
            command.path[-1],
            help=command.help,
            formatter_class=HelpFormatter,
            epilog=_config_help(command) if command.config is not None else None,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except UsageError as err:  # config errors, missing paths, malformed files, a run folder in
        # use or holding a run, a resume that would change the run, a refused checkpoint file
        print(error_line("layerwise", err), file=sys.stderr)
        return 2
    except TrainingDivergedError as err:  # NaN / inf loss; the last good checkpoint is kept
        print(error_line("layerwise", err), file=sys.stderr)
        return DIVERGED_EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
