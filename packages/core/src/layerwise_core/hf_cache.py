"""The keyword under which a transformers callable takes the KV cache: `cache` or `past_key_values`.

transformers 5.25 renamed the cache argument of its models, decoder layers, attention modules, mask
functions and output classes from `past_key_values` to `cache` (the old name is deprecated, with a
`FutureWarning`, until 5.40). Code that hands a cache to transformers asks the callable it is about
to call which name it takes, instead of switching on the version: it then works on both sides of
the rename and warns on neither.

    from layerwise_core.hf_cache import cache_keyword

    backbone(input_ids=x, **{cache_keyword(backbone.forward): cache}, use_cache=True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["cache_keyword"]


def cache_keyword(fn: Callable[..., Any]) -> str:
    """`"cache"` if `fn` has a parameter named `cache`, else `"past_key_values"`.

    `fn` is what will be called: a module's `forward` (not the module: its `__call__` takes
    `*args, **kwargs`), `create_causal_mask`, or a `ModelOutput` class. A callable that names
    neither (only `**kwargs`) gets `"past_key_values"`, the name every transformers 4.x/5.x
    accepts.
    """
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and C functions have no inspectable signature
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"
