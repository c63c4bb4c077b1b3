"""User errors: what the user asked for cannot work, and the message says how to fix it.

    raise UsageError("train.block_size 512 exceeds max_position_embeddings 256: lower it")

Raised where the problem is found, before anything is written; a command-line entry point catches
`UsageError` once and prints `error_line(prog, err)`, `PROG: error: <what>: <fix>`, on one line
with exit status 2. Any other exception is a bug and keeps its traceback.

`UsageError` is a `ValueError`; the two path errors are also `FileNotFoundError` /
`FileExistsError`, so callers that catch the built-in types keep working.
"""

from __future__ import annotations

__all__ = ["MissingPathError", "PathExistsError", "UsageError", "error_line"]


class UsageError(ValueError):
    """A mistake in the user's input (a config value, a path, a file's contents).

    The message reads `<what is wrong>: <how to fix it>`, on one line, naming the config field,
    flag, file and line where the mistake is.
    """


class MissingPathError(UsageError, FileNotFoundError):
    """A path the user gave does not exist, or is not the kind of file or folder it must be."""


class PathExistsError(UsageError, FileExistsError):
    """An output path the user gave already holds something that must not be overwritten."""


def error_line(prog: str, err: BaseException) -> str:
    """`"{prog}: error: {err}"` on one line (a multi-line message is joined with spaces)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return f"{prog}: error: {text}"
