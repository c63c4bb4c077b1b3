"""The two depth-report commands agree: `layerwise probe` and `depth-probe` give their shared
flags the same names, dests, defaults and actions; every `layerwise` subcommand's --help shows
the defaults, and those taking a config list its top-level keys (checked against the models)."""

import argparse
import subprocess
import sys

import pytest

from depth_probe.cli import _parser as depth_probe_parser
from layerwise.cli import _CONFIG_KEYS
from layerwise.cli import _parser as layerwise_parser
from layerwise_core import LayerwiseConfig

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


def config_classes():
    from layerwise.eval.decode import DecodeConfig
    from layerwise.finetune import FinetuneConfig
    from layerwise.quickstart import QuickstartConfig
    from layerwise.train import PretrainConfig

    return {
        "pretrain": PretrainConfig,
        "finetune": FinetuneConfig,
        "quickstart": QuickstartConfig,
        "eval decode": DecodeConfig,
    }


@pytest.mark.parametrize("command", sorted(_CONFIG_KEYS))
def test_config_help_lists_the_top_level_keys_of_the_model(command):
    cls = config_classes()[command]
    name, package, source, sections, values, example = _CONFIG_KEYS[command]
    fields = cls.model_fields
    is_section = {
        k: isinstance(f.annotation, type) and issubclass(f.annotation, LayerwiseConfig)
        for k, f in fields.items()
    }
    assert sections == [k for k in fields if is_section[k]]
    assert values == [k for k in fields if not is_section[k]]
    assert name == cls.__name__ and cls.__module__.replace(".", "/").startswith(source[:-3])
    cls.from_dict({}, overrides=example.split())  # the example overrides are valid
    help_text = dict(subparsers(layerwise_parser()))[tuple(command.split())].format_help()
    for key in sections + values:
        assert key in help_text
    assert f"from {package} import {name}; print({name}().to_yaml())" in help_text


def test_the_printed_defaults_command_works():
    code = "from layerwise.train import PretrainConfig; print(PretrainConfig().to_yaml())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("data:\n  source: shakespeare")
