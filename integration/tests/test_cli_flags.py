"""The two depth-report commands agree: `layerwise probe` and `depth-probe` give their shared
flags the same names, dests, defaults and actions; every `layerwise` subcommand's --help shows
the defaults, and those taking a config list its top-level keys (checked against the models)."""

import argparse
import importlib
import re
import subprocess
import sys

import pytest

from depth_probe.cli import _parser as depth_probe_parser
from layerwise.cli import SUBCOMMANDS, config_keys
from layerwise.cli import _parser as layerwise_parser

SHARED = {
    "--model",
    "--out",
    "--tokenizer",
    "--max-length",
    "--rows",
    "--sweep",
    "--no-sweep",
    "--skip-effect",
    "--no-skip-effect",
}


def subparsers(parser, path=()):
    """(command path, parser) for every (nested) subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subparsers(sub, (*path, name))


def options(parser):
    return {
        s: a for a in parser._actions if a.help is not argparse.SUPPRESS for s in a.option_strings
    }


def test_shared_flags_have_the_same_dest_default_and_action():
    probe = dict(subparsers(layerwise_parser()))[("probe",)]
    ours, theirs = options(probe), options(depth_probe_parser())
    assert set(ours) & set(theirs) >= SHARED  # no shared flag renamed on one side only
    for flag in set(ours) & set(theirs) - {"-h", "--help"}:
        a, b = ours[flag], theirs[flag]
        assert (a.dest, a.default, a.type, type(a)) == (b.dest, b.default, b.type, type(b)), flag
    assert ours["--max-length"].default == 128 and ours["--sweep"].default is False


def test_old_no_sweep_still_parses():
    args = layerwise_parser().parse_args(["probe", "--model", "m", "--out", "o", "--no-sweep"])
    assert args.sweep is False and args.skip_effect is False


def test_every_subcommand_help_shows_its_defaults():
    for path, parser in subparsers(layerwise_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.help is argparse.SUPPRESS or not action.option_strings:
                continue
            if action.dest in ("help", "version"):
                continue
            assert action.help, (path, action.option_strings)
            if action.default is not None and not action.required:
                assert f"(default: {action.default})" in text, (path, action.option_strings)


# the top-level keys of each command's config, as its --help lists them (the layout of
# docs/architecture.md): (sections, values)
CONFIG_KEYS = {
    ("pretrain",): (
        ["data", "model", "objective", "optimizer", "spectral", "schedule", "train"],
        [],
    ),
    ("finetune",): (
        ["model", "data", "method", "prune", "optimizer", "schedule", "train", "eval"],
        [],
    ),
    ("quickstart",): (["base"], ["runs", "eval_all_validation", "depth_report", "depth_rows"]),
    ("eval", "decode"): (["decode"], ["gen_length", "batch_size", "scorer", "seed"]),
}


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c.path))
def test_config_help_lists_the_top_level_keys_of_the_model(command):
    if command.config is None:
        assert command.path not in CONFIG_KEYS
        return
    sections, values = config_keys(command.config)
    assert (sections, values) == CONFIG_KEYS[command.path]
    assert sorted(sections + values) == sorted(command.config.model_fields)
    command.config.from_dict({}, overrides=command.example.split())  # the example is valid
    help_text = " ".join(dict(subparsers(layerwise_parser()))[command.path].format_help().split())
    if sections:
        assert f"sections: {', '.join(sections)}" in help_text
    if values:
        assert f"values: {', '.join(values)}" in help_text
    name = command.config.__name__
    package = command.config.__module__.replace(".", "/")
    assert f"{name} in {package}.py" in help_text
    match = re.search(
        r'python -c "(from (\S+) import \w+; print\(\w+\(\)\.to_yaml\(\)\))"', help_text
    )
    module = importlib.import_module(match.group(2))
    assert getattr(module, name) is command.config  # the printed command imports the class


def test_the_printed_defaults_command_works():
    code = "from layerwise.train import PretrainConfig; print(PretrainConfig().to_yaml())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("data:\n  source: shakespeare")
