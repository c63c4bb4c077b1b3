"""What the command-line tools of every package share: `--help` that shows the defaults.

parser = argparse.ArgumentParser(prog="depth-probe", formatter_class=HelpFormatter)
"""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` lists each option's default; descriptions and epilogs keep their line breaks.

    Unlike argparse's `ArgumentDefaultsHelpFormatter`, a required option or a default of None
    (nothing set) shows no "(default: None)".
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or action.default is None
            or action.default is argparse.SUPPRESS
            or action.required
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return action.help
        return f"{text} (default: %(default)s)".lstrip()
