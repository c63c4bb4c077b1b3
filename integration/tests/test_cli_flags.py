"""The two depth-report commands agree: `layerwise probe` and `depth-probe` give their shared
flags the same names, dests, defaults and actions; every `layerwise` subcommand's --help shows
the defaults, and those taking a config list its top-level keys (checked against the models);
`layerwise --help` / `--version` import no torch, and a subcommand's module is imported only
when the command line reaches it."""

import argparse
import importlib
import json
import re
import subprocess
import sys
import textwrap

import pytest

from depth_probe.cli import _parser as depth_probe_parser
from layerwise import __version__
from layerwise.cli import SUBCOMMANDS
from layerwise.cli import _parser as layerwise_parser
from layerwise.commands import config_keys

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
    probe = dict(subparsers(layerwise_parser(SUBCOMMANDS)))[("probe",)]
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
    for path, parser in subparsers(layerwise_parser(SUBCOMMANDS)):
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
        ["data", "model", "objective", "optimizer", "spectral", "sparsity", "schedule", "train"],
        [],
    ),
    ("finetune",): (
        ["model", "data", "method", "prune", "optimizer", "objective", "schedule", "train", "eval"],
        [],
    ),
    ("quickstart",): (["base"], ["runs", "eval_all_validation", "depth_report", "depth_rows"]),
    ("eval", "decode"): (["decode"], ["gen_length", "batch_size", "scorer", "seed"]),
}


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda c: " ".join(c.path))
def test_config_help_lists_the_top_level_keys_of_the_model(command, capsys):
    module = command.load()
    config = module.CONFIG
    if config is None:
        assert command.path not in CONFIG_KEYS
        return
    sections, values = config_keys(config)
    assert (sections, values) == CONFIG_KEYS[command.path]
    assert sorted(sections + values) == sorted(config.model_fields)
    config.from_dict({}, overrides=module.EXAMPLE.split())  # the example is valid
    with pytest.raises(SystemExit) as exit_:  # `layerwise PATH --help`: set up as it is reached
        layerwise_parser().parse_args([*command.path, "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    if sections:
        assert f"sections: {', '.join(sections)}" in help_text
    if values:
        assert f"values: {', '.join(values)}" in help_text
    name = config.__name__
    package = config.__module__.replace(".", "/")
    assert f"{name} in {package}.py" in help_text
    match = re.search(
        r'python -c "(from (\S+) import \w+; print\(\w+\(\)\.to_yaml\(\)\))"', help_text
    )
    exporter = importlib.import_module(match.group(2))
    assert getattr(exporter, name) is config  # the printed command imports the class


def test_the_printed_defaults_command_works():
    code = "from layerwise.train import PretrainConfig; print(PretrainConfig().to_yaml())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("data:\n  source: shakespeare")


def flags(parser):
    return {s for a in parser._actions for s in a.option_strings}


def test_only_the_subcommand_on_the_command_line_is_set_up():
    parser = layerwise_parser()
    commands = dict(subparsers(parser))
    assert [flags(commands[c.path]) for c in SUBCOMMANDS] == [{"-h", "--help"}] * len(SUBCOMMANDS)
    args = parser.parse_args(["probe", "--model", "m", "--out", "o"])
    assert (args.model, args.out, args.rows) == ("m", "o", 8) and callable(args.run)
    assert {"--model", "--sweep", "--overwrite"} <= flags(commands[("probe",)])
    others = [flags(commands[c.path]) for c in SUBCOMMANDS if c.path != ("probe",)]
    assert others == [{"-h", "--help"}] * (len(SUBCOMMANDS) - 1)
    assert commands[("probe",)].epilog is None and commands[("pretrain",)].epilog is None


# what `layerwise --help` and `--version` must not import (`import torch` alone takes ~1.3 s)
HEAVY = ("torch", "transformers", "layerwise_core", "layerwise.commands", "layerwise.train")


def test_top_level_help_and_version_import_no_torch():
    """A fresh interpreter (this one has torch loaded) runs `layerwise --help`, `--version` and
    `eval --help`, then lists the HEAVY modules it holds: none."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from layerwise.cli import main
        out = io.StringIO()
        for argv in (["--help"], ["--version"], ["eval", "--help"]):
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as exit_:
                    assert exit_.code == 0, (argv, exit_.code)
        heavy = [m for m in sys.modules for h in {HEAVY!r} if m == h or m.startswith(h + ".")]
        print(json.dumps({{"heavy": sorted(heavy), "out": out.getvalue()}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    for command in SUBCOMMANDS:  # every subcommand listed, from the table's static fields
        assert command.path[-1] in result["out"]
    assert f"\nlayerwise {__version__}\n" in result["out"]
