"""Seeding and RNG snapshots: the same seed gives the same run, and a resumed run continues exactly."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["get_rng_state", "seeded_torch_rng", "set_rng_state", "set_seed"]

try:  # numpy is optional: record its state only when it is installed
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy (if installed) and torch (CPU and every CUDA device).

    With `deterministic=True` also ask torch for deterministic kernels (slower on GPU).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"set_seed: seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if _np is not None:
        _np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextmanager
def seeded_torch_rng(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Inside: torch's global RNG (and that of `device` if it is a CUDA device) seeded with `seed`;
    on exit both are back where they were. For library code that draws from the global RNG
    (Hugging Face `generate(do_sample=True)`): its draws then depend on `seed` alone, and the
    caller's random state is left untouched."""
    device = torch.device(device) if device is not None else None
    with torch.random.fork_rng(
        devices=[device] if device is not None and device.type == "cuda" else []
    ):
        torch.manual_seed(seed)
        yield


def get_rng_state() -> dict[str, Any]:
    """Snapshot of every global RNG, to be saved in a checkpoint and restored by `set_rng_state`.

    Only tensors, ints, floats, strings and None, so it saves with `torch.save` and loads with
    `weights_only=True` (`torch_load_safe`): Python's Mersenne Twister state and NumPy's key
    become int64 tensors.
    """
    version, mt, gauss = random.getstate()
    state: dict[str, Any] = {
        "python_version": version,
        "python_state": torch.tensor(mt, dtype=torch.int64),  # 624 words + the position
        "python_gauss": gauss,
        "torch": torch.get_rng_state(),
    }
    if _np is not None:
        kind, key, pos, has_gauss, cached = _np.random.get_state()
        state.update(
            numpy_kind=str(kind),
            numpy_key=torch.from_numpy(key.astype(_np.int64)),
            numpy_pos=int(pos),
            numpy_has_gauss=int(has_gauss),
            numpy_gauss=float(cached),
        )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot from `get_rng_state` (missing entries are left alone)."""
    if "python_state" in state:
        mt = tuple(int(x) for x in state["python_state"].tolist())
        random.setstate((int(state["python_version"]), mt, state["python_gauss"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    if "numpy_key" in state and _np is not None:
        key = state["numpy_key"].numpy().astype(_np.uint32)
        _np.random.set_state(
            (
                state["numpy_kind"],
                key,
                int(state["numpy_pos"]),
                int(state["numpy_has_gauss"]),
                float(state["numpy_gauss"]),
            )
        )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
