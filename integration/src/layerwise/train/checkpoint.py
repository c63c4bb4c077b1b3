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
temp folder is removed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerwise_core import (
    atomic_write,
    barrier,
    get_rank,
    get_rng_state,
    is_main_process,
    load_safetensors,
    save_safetensors,
    set_rng_state,
    torch_save_atomic,
)

__all__ = ["LoadedCheckpoint", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

LATEST = "latest"


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
) -> Path:
    """Write checkpoint `step` under `root` (call on every process: each saves its RNG state)."""
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
    except BaseException:
        if is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    return final


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The folder `latest` points at, or None when there is no checkpoint yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(root) / pointer.read_text().strip()
    if not (folder / "trainer_state.json").is_file():
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


def load_checkpoint(folder: str | os.PathLike, restore_rng: bool = True) -> LoadedCheckpoint:
    """Read a checkpoint; with `restore_rng` also put this process's RNG states back."""
    folder = Path(folder)
    model_state, _ = load_safetensors(folder / "model.safetensors")
    optimizer_state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    trainer_state = json.loads((folder / "trainer_state.json").read_text())
    if restore_rng:
        rng = folder / f"rng_rank{get_rank()}.pt"
        if not rng.is_file():  # resumed on more processes than saved: reuse rank 0's streams
            rng = folder / "rng_rank0.pt"
        set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
    return LoadedCheckpoint(
        folder, int(trainer_state["step"]), model_state, optimizer_state, trainer_state
    )
