"""Checkpoints that survive a crash at any moment, and exact resume from them.

    out_dir/checkpoints/step_N/model.safetensors    model parameters (fp32, unwrapped)
                              /optimizer.pt         optimizer + LR scheduler state
                              /rng_rank{r}.pt       every global RNG of process r
                              /trainer_state.json   step, data position, pending log sums
                              /config.yaml          the run's configuration
    out_dir/checkpoints/latest                      "step_N": the newest complete checkpoint

A checkpoint is written into `.step_N.tmp/` and renamed to `step_N/` only once every file is
complete (each file itself goes through temp + fsync + rename); `latest` is replaced atomically
afterwards. A failure at any point leaves the previous `step_N/` and `latest` untouched, and the
temp folder is removed; what a killed writer leaves is cleared by `recover_checkpoints` at the
next start. With `keep_last`, older step folders are deleted only after a newer checkpoint is
complete and `latest` names it.

Loading never runs code from a file: tensors come from safetensors, the optimizer and RNG states
through `torch.load(weights_only=True)` (`layerwise_core.torch_load_safe`), the rest is JSON and
YAML (`safe_load`). Any refused or unreadable file raises a one-line `CheckpointFileError`
naming it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from layerwise_core import (
    CheckpointFileError,
    atomic_write,
    barrier,
    get_rank,
    get_rng_state,
    is_main_process,
    load_safetensors,
    remove_temp_leftovers,
    save_safetensors,
    set_rng_state,
    torch_load_safe,
    torch_save_atomic,
)

__all__ = [
    "LoadedCheckpoint",
    "checkpoint_steps",
    "latest_checkpoint",
    "load_checkpoint",
    "read_checkpoint_file",
    "recover_checkpoints",
    "save_checkpoint",
]

LATEST = "latest"
_STEP = re.compile(r"^step_(\d+)$")
_REPLACED = re.compile(r"^\.(step_\d+)\.old$")  # a step folder being replaced by a new save


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step}"


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    config_yaml: str,
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint `step` under `root` (call on every process: each saves its RNG state).

    With `keep_last`, once `latest` names the new checkpoint, only the `keep_last` newest step
    folders up to it are kept (folders of later steps, left by a rolled-back `latest`, stay).
    """
    root = Path(root)
    final = _step_dir(root, step)
    tmp = root / f".step_{step}.tmp"
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)  # debris of an earlier crash
        tmp.mkdir(parents=True)
    barrier()
    try:
        torch_save_atomic(get_rng_state(), tmp / f"rng_rank{get_rank()}.pt")
        if is_main_process():
            save_safetensors(model_state, tmp / "model.safetensors", metadata={"step": str(step)})
            torch_save_atomic(optimizer_state, tmp / "optimizer.pt")
            with atomic_write(tmp / "trainer_state.json", "w") as handle:
                json.dump({"step": step, **trainer_state}, handle, indent=1)
            with atomic_write(tmp / "config.yaml", "w") as handle:
                handle.write(config_yaml)
        barrier()
        if is_main_process():
            if final.exists():  # the same step saved again after resuming from an earlier one
                stale = root / f".step_{step}.old"
                shutil.rmtree(stale, ignore_errors=True)
                os.rename(final, stale)
                os.rename(tmp, final)
                shutil.rmtree(stale)
            else:
                os.rename(tmp, final)
            with atomic_write(root / LATEST, "w") as handle:
                handle.write(final.name + "\n")
            if keep_last is not None:
                _prune(root, step, keep_last)
    except BaseException:
        if is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    return final


def checkpoint_steps(root: str | os.PathLike) -> list[int]:
    """Steps of the `step_N` folders under `root`, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _STEP.match(p.name)))


def _prune(root: Path, newest: int, keep_last: int) -> None:
    """Delete step folders older than the `keep_last` newest up to `newest` (a rename to a
    `.tmp` name first, so that a kill mid-delete leaves nothing that looks like a checkpoint)."""
    older = [s for s in checkpoint_steps(root) if s <= newest][:-keep_last]
    for step in older:
        doomed = root / f".step_{step}.deleted.tmp"
        os.rename(_step_dir(root, step), doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def recover_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Undo what a writer killed mid-checkpoint left under `root` (call before reading `latest`,
    on the main process, holding the run folder's lock); returns the paths removed.

    `.step_N.tmp/` (an incomplete new checkpoint), `.step_N.deleted.tmp/` (retention cut short)
    and `.latest.*.tmp` are removed; a `.step_N.old/` is the complete checkpoint that a save of
    the same step was replacing: it comes back as `step_N/` if the new one never arrived.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = remove_temp_leftovers(root)
    for entry in sorted(root.iterdir()):
        match = _REPLACED.match(entry.name)
        if match is None:
            continue
        if (root / match.group(1)).exists():
            shutil.rmtree(entry)
            removed.append(entry)
        else:
            os.rename(entry, root / match.group(1))
    return removed


def read_checkpoint_file(path: Path, parse: Callable[[str], Any]) -> Any:
    """`parse(text of path)`, with any failure reported in one line naming the file."""
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise CheckpointFileError(
            f"{path} is missing: the checkpoint is incomplete; delete its folder (and point "
            "`latest` at an earlier one) or start afresh"
        ) from None
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as err:  # JSON, YAML, UTF-8, config
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise CheckpointFileError(
            f"{path} is not a readable checkpoint file ({lines[0] if lines else err!r}); "
            "restore it from a good copy or delete the checkpoint"
        ) from None


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder `latest` points at, or None when there is no checkpoint yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    name = read_checkpoint_file(pointer, str.strip)
    folder = Path(root) / name
    if not _STEP.match(name) or not (folder / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"{pointer} names {folder.name}, which is missing or incomplete; point it at a complete "
            "step_N folder or delete it to start afresh"
        )
    return folder


@dataclass
class LoadedCheckpoint:
    folder: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    trainer_state: dict[str, Any]
    rng_state: dict[str, Any]  # this process's RNG states (`layerwise_core.set_rng_state`)


def _load_torch(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointFileError(
            f"{path} is missing: the checkpoint is incomplete; delete its folder (and point "
            "`latest` at an earlier one) or start afresh"
        )
    return torch_load_safe(path)


def load_checkpoint(folder: str | os.PathLike, restore_rng: bool = True) -> LoadedCheckpoint:
    """Read a checkpoint; with `restore_rng` also put this process's RNG states back (they are
    in `.rng_state` either way).

    Runs no code from any file (see the module docstring); a refused, unreadable or missing file
    raises `CheckpointFileError` naming it, before any RNG state is touched.
    """
    folder = Path(folder)
    trainer_state = read_checkpoint_file(folder / "trainer_state.json", json.loads)
    if not isinstance(trainer_state, dict) or not isinstance(trainer_state.get("step"), int):
        raise CheckpointFileError(
            f"{folder / 'trainer_state.json'} holds no integer 'step': not a layerwise "
            "checkpoint; restore it from a good copy or delete the checkpoint"
        )
    if not (folder / "model.safetensors").is_file():
        _load_torch(folder / "model.safetensors")  # the "missing" message
    model_state, _ = load_safetensors(folder / "model.safetensors")
    optimizer_state = _load_torch(folder / "optimizer.pt")
    rng = folder / f"rng_rank{get_rank()}.pt"
    if not rng.is_file():  # resumed on more processes than saved: reuse rank 0's streams
        rng = folder / "rng_rank0.pt"
    rng_state = _load_torch(rng)
    if not isinstance(rng_state, dict) or "torch" not in rng_state:
        raise CheckpointFileError(
            f"{rng} holds no RNG state of layerwise_core.get_rng_state (it was written by an "
            "older layerwise or another program); restart the run"
        )
    if restore_rng:
        set_rng_state(rng_state)
    return LoadedCheckpoint(
        folder, trainer_state["step"], model_state, optimizer_state, trainer_state, rng_state
    )
