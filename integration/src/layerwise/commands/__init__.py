"""The `layerwise` subcommands, one module each, and what they share.

`layerwise.cli` names each command module by its import path and imports it only when its
subcommand is parsed or run, so `layerwise --help` and `layerwise --version` import no torch,
transformers or pipeline. A command module defines, with its imports at module level:

    CONFIG: type[LayerwiseConfig] | None   the config its --config file holds
    EXAMPLE: str                           example overrides shown in --help (a test checks them)
    add_arguments(parser)                  its flags
    run(args) -> int                       what it runs; returns the exit status

This package holds what they share: `setup` (a subcommand's parser from its module: flags,
`--help` formatting, the epilog listing the config's top-level keys, the handler) and `run_command`
(exit status 2 for a user error, 3 for a diverged training run, each reported on one line).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from types import ModuleType

from layerwise.train.divergence import DIVERGED_EXIT_STATUS, TrainingDivergedError
from layerwise_core import LayerwiseConfig, TaggedChoice, UsageError, error_line
from layerwise_core.command_line import HelpFormatter

__all__ = ["config_file_arguments", "config_help", "config_keys", "run_command", "setup"]

USAGE_ERROR_EXIT_STATUS = 2


def setup(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    """Make `parser` the subcommand of the command module `module`: its flags, its handler and,
    for a command that takes a config, the --help epilog listing the config's top-level keys."""
    parser.formatter_class = HelpFormatter
    if module.CONFIG is not None:
        parser.epilog = config_help(module.CONFIG, module.EXAMPLE)
    module.add_arguments(parser)
    parser.set_defaults(run=functools.partial(run_command, module.run))


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`handler(args)`'s exit status; a user error or a diverged run is printed on one line as
    `layerwise: error: <what>: <fix>` and gives 2 or 3. Any other failure keeps its traceback."""
    try:
        return handler(args)
    except UsageError as err:  # config errors, missing paths, malformed files, a run folder in
        # use or holding a run, a resume that would change the run, a refused checkpoint file
        print(error_line("layerwise", err), file=sys.stderr)
        return USAGE_ERROR_EXIT_STATUS
    except TrainingDivergedError as err:  # NaN / inf loss; the last good checkpoint is kept
        print(error_line("layerwise", err), file=sys.stderr)
        return DIVERGED_EXIT_STATUS


def config_file_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """`--config FILE` (required) and `KEY=VALUE` overrides of the config class `name`."""
    parser.add_argument("--config", required=True, help=f"{name} YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


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


def config_help(cls: type[LayerwiseConfig], example: str) -> str:
    """The --help epilog of a command that takes a config: its top-level keys and the reference."""
    sections, values = config_keys(cls)
    package = _import_path(cls)
    source = cls.__module__.replace(".", "/") + ".py"
    lines = [f"config file ({cls.__name__}), top-level keys:"]
    if sections:
        lines.append(f"  sections: {', '.join(sections)}")
    if values:
        lines.append(f"  values:   {', '.join(values)}")
    lines += [
        f"overrides: dotted KEY=VALUE pairs, e.g. {example}",
        f"full reference (every key, its default and meaning): {cls.__name__} in {source};",
        f'the defaults as YAML: python -c "from {package} import {cls.__name__}; '
        f'print({cls.__name__}().to_yaml())"',
    ]
    return "\n".join(lines)
