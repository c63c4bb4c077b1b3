"""`depth-probe` flags: `--model` (the old positional MODEL still works, with a FutureWarning),
and `--help` shows every option's default."""

import argparse

import pytest

from depth_probe.cli import _parse_args, _parser

REST = ["--text", "t.txt", "--out", "o"]


def test_model_flag_and_the_deprecated_positional_parse_the_same():
    new = _parse_args(["--model", "runs/final", *REST])
    with pytest.warns(
        FutureWarning, match=r"depth-probe: the argument `MODEL \(positional\)`.*--model"
    ):
        old = _parse_args(["runs/final", *REST])
    assert vars(old) == vars(new) and new.model == "runs/final"
    assert not hasattr(new, "model_path")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (REST, "required: --model"),
        (["a", "--model", "b", *REST], "give the model folder once"),
    ],
)
def test_model_missing_or_given_twice_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_old_switches_still_parse():
    assert _parse_args(["--model", "m", *REST, "--sweep"]).sweep is True
    assert _parse_args(["--model", "m", *REST, "--no-figures"]).figures is False
    assert _parse_args(["--model", "m", *REST]).figures is True


def test_help_shows_every_default():
    parser = _parser()
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.help is argparse.SUPPRESS or not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings} has no help, so no default is shown"
        if action.default is not None and not action.required:
            assert f"(default: {action.default})" in text, action.option_strings
