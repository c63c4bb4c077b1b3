"""The `layerwise` command.

    layerwise quickstart [--out runs/quickstart] [--minutes 6] [a.b=c ...]
    layerwise pretrain --config FILE.yaml|RECIPE [a.b=c ...]   (RECIPE: docs/recipes.md)
    layerwise eval retrieval --model DIR [--contexts 128 256] [--depths 0 0.5 1] [--json OUT]
    layerwise eval decode --model DIR --prompts FILE.jsonl [--config FILE.yaml] [decode=prophet ...]
    layerwise probe --model DIR --out DIR [--source shakespeare] [--max-length 128] [--rows 8]
    layerwise study NAME|FILE [--out DIR] [--jobs N] [--report] [a.b=c ...]   (docs/studies.md)

Overrides are dotted `key=value` pairs applied on top of the YAML file (values parse as YAML
scalars: `train.steps=300`, `optimizer.betas=[0.9,0.95]`, `train.resume=true`; a tagged
choice switches with `optimizer.name=spam` or `optimizer=spam`, see docs/architecture.md).

Exit status: 0 done; 2 a user error (a bad config value or path, a malformed file, a run folder
in use or already holding a run, a resume that would change the run), reported on one line as
`layerwise: error: <what>: <fix>` before anything is written; 3 training diverged (a NaN / inf
loss: the run stops before applying that step and keeps its last good checkpoint). Any other
failure is a bug and shows its traceback.

Each subcommand lives in a module of `layerwise.commands`, named here by its import path and
imported only when that subcommand is parsed or run: `layerwise --help` and `--version` import
no torch, transformers or pipeline.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

from layerwise.__about__ import __version__

__all__ = ["SUBCOMMANDS", "Subcommand", "main"]

# what every command module shares (its parser's formatting and epilog, the exit statuses)
COMMANDS_PACKAGE = "layerwise.commands"


def _import(module: str) -> ModuleType:
    """The CLI's one deferred import (a command module and what it needs: torch, transformers,
    the pipelines), made when its subcommand is parsed or run."""
    return importlib.import_module(module)


@dataclass(frozen=True)
class Subcommand:
    """One `layerwise` subcommand: where it sits, its one-line help, and the module that holds its
    flags, its handler and its config (`layerwise.commands` describes a command module)."""

    path: tuple[str, ...]  # ("eval", "decode") for `layerwise eval decode`
    help: str
    module: str  # import path of its command module, e.g. "layerwise.commands.pretrain"

    def load(self) -> ModuleType:
        """The command module, imported now."""
        return _import(self.module)


# groups of subcommands (`layerwise eval TASK`): their help
_GROUPS = {("eval",): "evaluate a saved model"}

SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        ("quickstart",),
        "real corpus -> tokenizer -> small Llama trained on CPU -> report",
        "layerwise.commands.quickstart",
    ),
    Subcommand(
        ("pretrain",), "pre-train a Llama from a YAML config", "layerwise.commands.pretrain"
    ),
    Subcommand(
        ("finetune",),
        "fine-tune a HF causal LM on instruction jsonl: full | lora | lift | seft",
        "layerwise.commands.finetune",
    ),
    Subcommand(
        ("eval", "retrieval"),
        "key-value retrieval (needle) exact match by context length and depth",
        "layerwise.commands.eval_retrieval",
    ),
    Subcommand(
        ("eval", "decode"),
        "masked-diffusion LM answers prompts: decode=llada|prophet|fast_dllm|...",
        "layerwise.commands.eval_decode",
    ),
    Subcommand(
        ("probe",),
        "depth-probe report of a saved model on a corpus's validation text",
        "layerwise.commands.probe",
    ),
    Subcommand(
        ("study",),
        "a controlled study: named runs x seeds from one YAML, resumable, one report",
        "layerwise.commands.study",
    ),
]


def _set_up(command: Subcommand, parser: argparse.ArgumentParser) -> None:
    """Give the subcommand's parser its flags, handler and --help epilog (imports its module)."""
    _import(COMMANDS_PACKAGE).setup(parser, command.load())


class _Subparsers(argparse._SubParsersAction):
    """argparse's subcommand action; a subcommand's parser is set up when the command line
    reaches it, so the others' modules are never imported."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, Subcommand] = {}

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        command = self.pending.pop(values[0], None)
        if command is not None:
            _set_up(command, self.choices[values[0]])
        super().__call__(parser, namespace, values, option_string)


def _parser(set_up: Iterable[Subcommand] = ()) -> argparse.ArgumentParser:
    """The `layerwise` parser. Every subcommand is there by name and help (the table's static
    fields); its flags and epilog are added when parsing reaches it, or now for those in
    `set_up` (tests pass SUBCOMMANDS to inspect every subcommand's parser)."""
    parser = argparse.ArgumentParser(
        prog="layerwise",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"layerwise {__version__}")
    # the subcommands under each group path: () for `layerwise COMMAND`, ("eval",) for its TASKs
    under: dict[tuple[str, ...], _Subparsers] = {
        (): parser.add_subparsers(
            dest="command", required=True, metavar="COMMAND", action=_Subparsers
        )
    }
    for command in SUBCOMMANDS:
        for depth in range(1, len(command.path)):
            group = command.path[:depth]
            if group not in under:  # `layerwise eval`: a subcommand holding subcommands
                group_parser = under[group[:-1]].add_parser(
                    group[-1],
                    help=_GROUPS[group],
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                )
                under[group] = group_parser.add_subparsers(
                    dest="task", required=True, metavar="TASK", action=_Subparsers
                )
        siblings = under[command.path[:-1]]
        siblings.add_parser(command.path[-1], help=command.help)
        siblings.pending[command.path[-1]] = command
    for command in set_up:
        siblings = under[command.path[:-1]]
        _set_up(siblings.pending.pop(command.path[-1]), siblings.choices[command.path[-1]])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    return args.run(args)  # layerwise.commands.run_command: exit statuses 2 and 3


if __name__ == "__main__":
    sys.exit(main())
