"""Checkpoint files that are never half-written, and loads that never run code from a file.

A crash (or an exception) at any point leaves either the previous file or the new one at `path`,
never a truncated mix. An exception removes the temp file; a killed process can leave one
(`.<name>.<random>.tmp` next to `path`), which `layerwise_core.remove_temp_leftovers` clears at
the next start. Files get the mode `open()` would give them (0o666 minus the umask), not
`mkstemp`'s 0o600.

`torch_load_safe` reads `torch.save` files with `weights_only=True`: tensors, numbers, strings,
lists, tuples and dicts only; a pickle that names any other global (the way a poisoned file runs
code) is refused with a `CheckpointFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, safe_open, save

from layerwise_core.errors import UsageError

__all__ = [
    "CheckpointFileError",
    "apply_umask",
    "atomic_write",
    "current_umask",
    "load_safetensors",
    "save_safetensors",
    "torch_load_safe",
    "torch_save_atomic",
]


class CheckpointFileError(UsageError):
    """A saved file (checkpoint, optimizer or RNG state, tensor cache) is refused or unreadable;
    the one-line message names the file."""


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover - the only portable way: set it and put it back
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def apply_umask(path: str | os.PathLike) -> None:
    """Give `path` the mode a plain `open()` / `mkdir()` would: 0o666 (files) or 0o777
    (folders) minus the umask (`tempfile` makes them 0o600 / 0o700)."""
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~current_umask())


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
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
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
    """Read a safetensors file; returns `(tensors, metadata)`. A file that is not safetensors
    raises `CheckpointFileError` naming it (safetensors never runs code from a file)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"load_safetensors: no file at {path}")
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # SafetensorError, OSError...: no common base to catch
        raise CheckpointFileError(
            f"{path} is not a readable safetensors file ({_first_line(err)}); restore it from a "
            "good copy or delete it"
        ) from None
    return tensors, dict(metadata)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through `atomic_write` (optimizer state, RNG states...)."""
    with atomic_write(path) as handle:
        torch.save(obj, handle)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _refusal_reason(err: BaseException) -> str:
    """The line of torch's weights-only error that says what was refused (a GLOBAL, an opcode)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith("Unsupported"):
            return line.rstrip(".")
    return lines[-1] if lines else type(err).__name__


def torch_load_safe(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`: tensors, numbers, strings, None and lists, tuples,
    dicts of them (optimizer and scheduler state dicts, `get_rng_state()`), never code.

    A file that needs any other Python object is refused, and an unreadable one reported, with a
    `CheckpointFileError` that names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torch_load_safe: no file at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of raw pickles
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f"{path} was refused: it holds Python objects other than tensors and plain values "
            f"({_refusal_reason(err)}), and loading them could run code: delete it, or restore a "
            "trusted copy written by this version of layerwise (earlier versions pickled NumPy "
            "RNG states: restart those runs)"
        ) from None
    except Exception as err:  # zip, EOF, safetensors (torch.load reads *.safetensors) errors
        raise CheckpointFileError(
            f"{path} is not a readable torch file ({_first_line(err)}); restore it from a good "
            "copy or delete it"
        ) from None
