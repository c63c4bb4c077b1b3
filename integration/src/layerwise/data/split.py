"""The train/validation split: by document, decided by a stable hash of each document's key.

A document goes to validation when its key ranks among the lowest `fraction` of
`sha256(salt + key)` values. The rule depends only on the keys (never on file order, Python's
salted `hash`, the machine or the seed), so every run and every process sees the same split, and
no document is cut in two across splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from layerwise_core import UsageError

__all__ = ["hash_fraction", "validation_keys"]


def _digest(salt: str, key: str) -> bytes:
    return hashlib.sha256(f"{salt}\x00{key}".encode()).digest()


def hash_fraction(key: str, salt: str = "layerwise-split") -> float:
    """Position of `key` in [0, 1) under the split hash (for streams, where keys cannot be ranked)."""
    return int.from_bytes(_digest(salt, key)[:8], "big") / 2**64


def validation_keys(
    keys: Sequence[str], fraction: float, salt: str = "layerwise-split"
) -> set[str]:
    """The `max(1, round(fraction * n))` distinct keys with the smallest hashes (none if fraction is 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    unique = sorted(set(keys))
    if fraction == 0.0:
        return set()
    if len(unique) < 2:
        raise UsageError(
            f"cannot split {len(unique)} document(s) into train and validation: give the corpus "
            "more documents (paragraphs of a text file, files of a folder, or JSON lines)"
        )
    count = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    return set(sorted(unique, key=lambda k: _digest(salt, k))[:count])
