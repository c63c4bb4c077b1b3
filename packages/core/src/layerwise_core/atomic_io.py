"""Checkpoint files that are never half-written: temp file, fsync, atomic rename.

A crash (or an exception) at any point leaves either the previous file or the new one at `path`,
never a truncated mix, and no temp file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, safe_open, save

__all__ = ["atomic_write", "load_safetensors", "save_safetensors", "torch_save_atomic"]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file next to `path`; on success fsync it and `os.replace` it onto `path`.

    On any exception the temp file is removed and `path` keeps its previous content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `tensors` as a safetensors file atomically. Metadata values must be strings."""
    if metadata is not None:
        bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
        if bad:
            raise TypeError(
                f"save_safetensors: metadata values must be str, got {bad} (json.dumps them)"
            )
    # safetensors refuses shared or non-contiguous storage: give it independent contiguous copies
    payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    seen: dict[int, str] = {}
    for name, tensor in payload.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel() > 0:
            payload[name] = tensor.clone()
        seen[ptr] = name
    data = save(payload, metadata=metadata)
    with atomic_write(path) as handle:
        handle.write(data)


def load_safetensors(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; returns `(tensors, metadata)`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"load_safetensors: no file at {path}")
    tensors = load_file(str(path), device=str(device))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return tensors, dict(metadata)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through `atomic_write` (optimizer state, RNG states...)."""
    with atomic_write(path) as handle:
        torch.save(obj, handle)
