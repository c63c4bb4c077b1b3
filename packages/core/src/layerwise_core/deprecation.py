"""Renamed arguments: the old keyword keeps working for one release, with a `FutureWarning`.

    @renamed_kwargs(ratio="mask_ratio")
    def mask_inputs(input_ids, mask_ratio, ...): ...

    mask_inputs(ids, ratio=0.15)   # FutureWarning: `ratio` is deprecated ... use `mask_ratio`

Every package uses this one decorator, so a rename reads (and warns) the same everywhere; the
canonical names are listed in docs/architecture.md ("Names").
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_kwargs", "warn_renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(
    where: str, old: str, new: str, *, kind: str = "argument", stacklevel: int = 2
) -> None:
    """Emit the one deprecation message for `old` renamed to `new` in `where` (a function or
    class name); `kind` says what was renamed ("argument", "attribute", "option")."""
    warnings.warn(
        f"{where}: the {kind} `{old}` is deprecated and will be removed in the next release; "
        f"use `{new}` (same meaning)",
        FutureWarning,
        stacklevel=stacklevel + 1,
    )


def _display_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__qualname__", getattr(func, "__name__", "function"))
    return name.removesuffix(".__init__")


def renamed_kwargs(**renames: str) -> Callable[[F], F]:
    """Decorator: accept each old keyword (`old="new"`) as an alias of the new one.

    The old keyword is moved to the new name with a `FutureWarning` that names the new argument;
    passing both is a `TypeError`. Positional calls are unaffected (positions do not change).
    Decorate `__init__` for classes. `inspect.signature` shows the new names only.
    """
    for old, new in renames.items():
        if old == new or not new.isidentifier():
            raise ValueError(f"renamed_kwargs: cannot rename {old!r} to {new!r}")

    def decorate(func: F) -> F:
        where = _display_name(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{where}() got both `{old}` (deprecated) and `{new}`; pass only `{new}`"
                        )
                    warn_renamed(where, old, new, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        wrapper.__renamed_kwargs__ = dict(renames)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
