"""HelpFormatter: --help shows real defaults, never "(default: None)" or a required option's."""

import argparse

from layerwise_core.command_line import HelpFormatter


def test_help_shows_defaults_but_not_none_or_required():
    parser = argparse.ArgumentParser(prog="tool", formatter_class=HelpFormatter, epilog="a\n  b")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--rows", type=int, default=8, help="windows")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder")
    parser.add_argument(
        "--sweep", action=argparse.BooleanOptionalAction, default=True, help="sweeps"
    )
    text = " ".join(parser.format_help().split())
    assert "windows (default: 8)" in text
    assert "sweeps (default: True)" in text
    assert "output folder (default" not in text and "(default: None)" not in text
    assert "a\n  b" in parser.format_help()  # the epilog keeps its layout
