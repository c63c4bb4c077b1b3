"""The keyword under which a transformers callable takes the KV cache: `cache` or `past_key_values`.

transformers 5.25 renamed the cache argument of its models, decoder layers, attention modules, mask
functions and output classes from `past_key_values` to `cache` (the old name is deprecated, with a
`FutureWarning`, until 5.40). Code that hands a cache to transformers asks the callable it is about
to call which name it takes, instead of switching on the version: it then works on both sides of
the rename and warns on neither.

    from layerwise_core.hf_cache import cache_keyword

    backbone(input_ids=x, **{cache_keyword(backbone.forward): cache}, use_cache=True)

Also here, for the same callers: `additive_mask`, because transformers' eager attention adds a 4-D
mask to the scores as it is (a bool mask would add 1 / 0 instead of masking keys out).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["additive_mask", "cache_keyword"]


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


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of a bool attention mask (True = attend): 0 where allowed, the dtype's
    minimum elsewhere, for attention that adds the mask to its scores (transformers' eager)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
