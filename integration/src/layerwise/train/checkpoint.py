"""Checkpoints that survive a crash at any moment, resume exactly, and reshard to another number of
processes.

    out_dir/checkpoints/step_N/state/              model + optimizer (torch.distributed.checkpoint:
                                                   .metadata, one __R_0.distcp per process)
                              /scheduler.pt        LR scheduler (and gradient scaler) state
                              /rng_rank{r}.pt      every global RNG of process r
                              /trainer_state.json  step, data position, pending log sums, format
                              /config.yaml         the run's configuration
                              /hf/                 config.json + tokenizer: the Hugging Face folder
                                                   without its weights (`export_checkpoint`)
    out_dir/checkpoints/latest                     "step_N": the newest complete checkpoint

The model and optimizer states are saved with `torch.distributed.checkpoint` (DCP) from
`get_state_dict`: parameter names are those of the bare model, tensors are DTensor shards under
FSDP2 (each process writes its own) and plain tensors under DDP or in one process (written once).
DCP reshards on load, so a checkpoint of N processes resumes on M, with either parallelism.

A checkpoint is written into `.step_N.tmp/` and renamed to `step_N/` only once every file is
complete (each file itself goes through temp + fsync + rename, DCP's files are fsynced); `latest`
is replaced atomically afterwards. A failure at any point leaves the previous `step_N/` and
`latest` untouched, and the temp folder is removed; what a killed writer leaves is cleared by
`recover_checkpoints` at the next start. With `keep_last`, older step folders are deleted only
after a newer checkpoint is complete and `latest` names it.

Loading never runs code from a file: DCP's `.metadata` is unpickled with only DCP's metadata
classes allowed, its tensors and non-tensor values (optimizer hyper-parameters) load with
`torch.load(weights_only=True)`, the scheduler and RNG states through `torch_load_safe`, the rest
is JSON and YAML (`safe_load`). Any refused or unreadable file raises a one-line
`CheckpointFileError` naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch import nn
from torch.distributed.checkpoint import CheckpointException, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.futures import Future

from layerwise_core import (
    CheckpointFileError,
    atomic_write,
    barrier,
    get_rank,
    get_rng_state,
    is_distributed,
    is_dtensor,
    is_main_process,
    local_tensor,
    remove_temp_leftovers,
    set_rng_state,
    torch_load_safe,
    torch_save_atomic,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedCheckpoint",
    "checkpoint_steps",
    "export_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_training_state",
    "read_checkpoint_file",
    "read_model_state",
    "recover_checkpoints",
    "save_checkpoint",
    "write_hf_folder",
]

CHECKPOINT_FORMAT = 2  # 1 (no "format" field): model.safetensors + optimizer.pt, not resumable
LATEST = "latest"
STATE = "state"  # the DCP folder: {"model": ..., "optimizer": ...}
HF = "hf"
SCHEDULER = "scheduler.pt"
_STEP = re.compile(r"^step_(\d+)$")
_REPLACED = re.compile(r"^\.(step_\d+)\.old$")  # a step folder being replaced by a new save
_SPARSE_MOMENTS = ("exp_avg", "exp_avg_sq")  # SPAM keeps them for the masked entries only


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step}"


def _no_dist() -> bool:
    return not is_distributed()


@contextlib.contextmanager
def _single_process_quietly(no_dist: bool) -> Iterator[None]:
    """DCP warns that it "assumes" one process whenever no process group exists: that is meant."""
    with warnings.catch_warnings():
        if no_dist:
            warnings.filterwarnings("ignore", message="torch.distributed is .*unavailable")
        yield


# --- SPAM's sparse momentum: dense in the checkpoint, so it reshards like any parameter --------


def _scatter(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The moment of the masked entries `values` (this process's shard) as a tensor of the mask's
    shape, zero elsewhere; a DTensor of the mask's sharding for a DTensor mask."""
    local_mask = local_tensor(mask)
    dense = torch.zeros(local_mask.shape, dtype=values.dtype, device=values.device)
    dense[local_mask] = values
    if not is_dtensor(mask):
        return dense
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        dense,
        mask.device_mesh,
        mask.placements,
        run_check=False,
        shape=mask.shape,
        stride=mask.stride(),
    )


def _expand_sparse_moments(optimizer_state: dict[str, Any]) -> None:
    """In `optimizer_state` (from `get_state_dict`; its per-parameter dicts are the optimizer's
    own, so they are replaced, not changed): SPAM's compressed moments of a sparse-momentum
    parameter (a vector of its mask's entries, of this process's shard) become dense."""
    state = optimizer_state["state"]
    for name, entry in list(state.items()):
        if "mask" in entry and all(k in entry for k in _SPARSE_MOMENTS):
            state[name] = {
                **entry,
                **{k: _scatter(entry["mask"], entry[k]) for k in _SPARSE_MOMENTS},
            }


def _compress_sparse_moments(optimizer_state: dict[str, Any]) -> None:
    """The inverse of `_expand_sparse_moments`, with the loaded masks (this process's shard)."""
    for entry in optimizer_state["state"].values():
        if "mask" in entry and all(k in entry for k in _SPARSE_MOMENTS):
            mask = local_tensor(entry["mask"])
            for key in _SPARSE_MOMENTS:
                entry[key] = local_tensor(entry[key])[mask].clone()


# --- writing ------------------------------------------------------------------------------------


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler_state: dict[str, Any],
    trainer_state: dict[str, Any],
    config_yaml: str,
    write_hf: Callable[[Path], None] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint `step` under `root`. Collective: call on every process, with the bare
    (FSDP2-sharded or unwrapped) `model` and its optimizer.

    `scheduler_state` (tensors, numbers, strings, lists and dicts of them) and the JSON
    `trainer_state` are those of rank 0; `write_hf(folder)` writes the model's config.json and
    tokenizer into `hf/` (rank 0). With `keep_last`, once `latest` names the new checkpoint,
    only the `keep_last` newest step folders up to it are kept (folders of later steps, left by a
    rolled-back `latest`, stay).
    """
    root = Path(root)
    final = _step_dir(root, step)
    tmp = root / f".step_{step}.tmp"
    model_state, optimizer_state = get_state_dict(model, optimizer)
    _expand_sparse_moments(optimizer_state)
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)  # debris of an earlier crash
        tmp.mkdir(parents=True)
    barrier()
    try:
        _dcp_save({"model": model_state, "optimizer": optimizer_state}, tmp / STATE)
        torch_save_atomic(get_rng_state(), tmp / f"rng_rank{get_rank()}.pt")
        if is_main_process():
            torch_save_atomic(scheduler_state, tmp / SCHEDULER)
            if write_hf is not None:
                (tmp / HF).mkdir()
                write_hf(tmp / HF)
            with atomic_write(tmp / "trainer_state.json", "w") as handle:
                state = {"step": step, "format": CHECKPOINT_FORMAT, **trainer_state}
                json.dump(state, handle, indent=1)
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


def _dcp_save(state: dict[str, Any], path: Path) -> None:
    """`dcp.save`, raising the first process's own error (a full disk: OSError) rather than DCP's
    wrapper of every process's traceback."""
    try:
        with _single_process_quietly(_no_dist()):
            dcp.save(state, storage_writer=FileSystemWriter(path), no_dist=_no_dist())
    except CheckpointException as err:
        cause = _root_cause(err)
        if cause is err:
            raise
        raise cause from None


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


# --- reading: nothing in a file runs --------------------------------------------------------------


def read_checkpoint_file(path: Path, parse: Callable[[str], Any]) -> Any:
    """`parse(text of path)`, with any failure reported in one line naming the file."""
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise CheckpointFileError(_missing(path)) from None
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as err:  # JSON, YAML, UTF-8, config
        raise CheckpointFileError(
            f"{path} is not a readable checkpoint file ({_first_line(err)}); "
            "restore it from a good copy or delete the checkpoint"
        ) from None


def _missing(path: Path) -> str:
    return (
        f"{path} is missing: the checkpoint is incomplete; delete its folder (and point "
        "`latest` at an earlier one) or start afresh"
    )


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else repr(err)


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


# The classes a DCP `.metadata` pickle may name (torch 2.13 writes exactly these): dataclasses of
# plain values, torch.Size, dtypes and layouts. Anything else (os.system, ...) is refused.
_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_CLASSES or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata class")


def _read_metadata(path: Path) -> Metadata:
    """DCP's `.metadata` of the folder `path`, unpickled with `_METADATA_CLASSES` only."""
    file = path / ".metadata"
    if not file.is_file():
        raise CheckpointFileError(_missing(file))
    try:
        with file.open("rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f"{file} was refused: it names Python objects other than checkpoint metadata "
            f"({_first_line(err)}), and loading them could run code: delete the checkpoint, or "
            "restore a trusted copy"
        ) from None
    except Exception as err:  # truncated, not a pickle
        raise CheckpointFileError(
            f"{file} is not a readable checkpoint file ({_first_line(err)}); restore it from a "
            "good copy or delete the checkpoint"
        ) from None
    if not isinstance(metadata, Metadata):
        raise CheckpointFileError(
            f"{file} holds no torch.distributed.checkpoint metadata; restore it from a good copy "
            "or delete the checkpoint"
        )
    return metadata


class _SafeReader(FileSystemReader):
    """DCP's file reader with the metadata unpickled by `_MetadataUnpickler`, and a file that
    cannot be read (refused, truncated) named in a `CheckpointFileError`."""

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(
                item
            )
        for relative_path, items in per_file.items():
            try:
                super().read_data(dataclasses.replace(plan, items=items), planner).wait()
            except Exception as err:
                raise CheckpointFileError(
                    f"{Path(self.path) / relative_path} is not a readable checkpoint shard "
                    f"({_first_line(err)}); restore the checkpoint from a good copy or delete it"
                ) from None
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = _read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner with the non-tensor values read by `torch.load(weights_only=True)`
    (the default unpickles them unrestricted)."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of raw pickles
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def _dcp_load(state: dict[str, Any], path: Path, *, no_dist: bool) -> None:
    try:
        with _single_process_quietly(no_dist):
            dcp.load(
                state,
                storage_reader=_SafeReader(path),
                planner=_SafeLoadPlanner(),
                no_dist=no_dist,
            )
    except CheckpointFileError:
        raise
    # a refused / truncated shard, a state that does not fit the model (DCP's CheckpointException
    # is a BaseException)
    except (Exception, CheckpointException) as err:
        cause = _root_cause(err)
        if isinstance(cause, CheckpointFileError):  # any process's: every process raises it
            raise CheckpointFileError(str(cause)) from None
        raise CheckpointFileError(
            f"{path} could not be loaded ({_first_line(cause)}); restore the checkpoint from a "
            "good copy, delete it, or resume with the configuration it was written with"
        ) from None


def _root_cause(err: BaseException) -> BaseException:
    """The first per-rank failure of a DCP `CheckpointException`, else `err`."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        if isinstance(first, tuple) and first and isinstance(first[0], BaseException):
            return first[0]
        if isinstance(first, BaseException):
            return first
    return err


@dataclass
class LoadedCheckpoint:
    folder: Path
    step: int
    scheduler_state: dict[str, Any]
    trainer_state: dict[str, Any]
    rng_state: dict[str, Any]  # this process's RNG states (`layerwise_core.set_rng_state`)


def _load_torch(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointFileError(_missing(path))
    return torch_load_safe(path)


def load_checkpoint(folder: str | os.PathLike, restore_rng: bool = True) -> LoadedCheckpoint:
    """Read and check every file of a checkpoint but the tensor shards (loaded into a model and
    optimizer by `load_training_state`); with `restore_rng` also put this process's RNG states
    back (they are in `.rng_state` either way).

    Runs no code from any file (see the module docstring); a refused, unreadable or missing file
    raises `CheckpointFileError` naming it, before any RNG state is touched. A checkpoint of the
    earlier format (model.safetensors + optimizer.pt) is refused with what to do.
    """
    folder = Path(folder)
    trainer_state = read_checkpoint_file(folder / "trainer_state.json", json.loads)
    if not isinstance(trainer_state, dict) or not isinstance(trainer_state.get("step"), int):
        raise CheckpointFileError(
            f"{folder / 'trainer_state.json'} holds no integer 'step': not a layerwise "
            "checkpoint; restore it from a good copy or delete the checkpoint"
        )
    if "format" not in trainer_state and (folder / "model.safetensors").is_file():
        raise CheckpointFileError(
            f"{folder} is a checkpoint of layerwise 0.1 (model.safetensors + optimizer.pt), "
            "which this version cannot resume (its checkpoints are sharded "
            "torch.distributed.checkpoint folders that any number of processes resumes): finish "
            "the run with the layerwise version that started it, or start it afresh "
            "(train.overwrite=true)"
        )
    if trainer_state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointFileError(
            f"{folder / 'trainer_state.json'} has checkpoint format "
            f"{trainer_state.get('format')!r}, this layerwise reads {CHECKPOINT_FORMAT}: resume "
            "it with the layerwise version that wrote it"
        )
    _read_metadata(folder / STATE)
    scheduler_state = _load_torch(folder / SCHEDULER)
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
        folder, trainer_state["step"], scheduler_state, trainer_state, rng_state
    )


def _materialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create every state tensor of a freshly built optimizer (DCP loads into existing tensors):
    one step on zero gradients at learning rate 0. What it computes is overwritten by the load,
    the parameters included."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    lrs = [group["lr"] for group in optimizer.param_groups]
    for p in params:
        p.grad = torch.zeros_like(p)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def load_training_state(
    folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load the model and optimizer states of checkpoint `folder` into `model` (bare, FSDP2-sharded
    or not) and its freshly built `optimizer`, resharded to this run's processes. Collective."""
    path = Path(folder) / STATE
    _materialize_optimizer_state(optimizer)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    _expand_sparse_moments(optimizer_state)
    _dcp_load({"model": model_state, "optimizer": optimizer_state}, path, no_dist=_no_dist())
    _compress_sparse_moments(optimizer_state)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def read_model_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The full model state (parameter name -> CPU tensor) of checkpoint `folder`, read in this
    process alone whatever the number of processes that wrote it."""
    path = Path(folder) / STATE
    metadata = _read_metadata(path)
    model_state: dict[str, torch.Tensor] = {}
    for key, entry in metadata.state_dict_metadata.items():
        where = (metadata.planner_data or {}).get(key, ())
        if len(where) == 2 and where[0] == "model" and isinstance(entry, TensorStorageMetadata):
            model_state[where[1]] = torch.empty(entry.size, dtype=entry.properties.dtype)
    if not model_state:
        raise CheckpointFileError(
            f"{path / '.metadata'} lists no model tensors; not a layerwise checkpoint"
        )
    _dcp_load({"model": model_state}, path, no_dist=True)
    return model_state


# --- Hugging Face folders ---------------------------------------------------------------------


def write_hf_folder(
    model_state: dict[str, torch.Tensor], skeleton: str | os.PathLike, out: str | os.PathLike
) -> Path:
    """Write a Hugging Face folder (`save_pretrained`: config.json, model.safetensors, tokenizer)
    at `out`, atomically, from a full `model_state` and a `skeleton` folder holding the model's
    config.json and tokenizer files (a checkpoint's `hf/`).

    The weights are loaded through the Auto classes of the saved model type
    (`ln_scaling.from_pretrained`: LNS / Mix-LN, CoE, masked-diffusion models), so the folder
    reloads exactly as `from_pretrained` will read it.
    """
    from layerwise.data.cache import atomic_directory
    from layerwise_core import save_safetensors
    from ln_scaling import from_pretrained

    skeleton, out = Path(skeleton), Path(out)
    if not (skeleton / "config.json").is_file():
        raise CheckpointFileError(_missing(skeleton / "config.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{out.name}.weights.", suffix=".tmp", dir=out.parent
    ) as stage:
        stage = Path(stage)
        shutil.copy(skeleton / "config.json", stage / "config.json")
        # safetensors refuses tensors that share memory (a tied LM head): one copy each
        save_safetensors(
            {k: v.contiguous().clone() for k, v in model_state.items()}, stage / "model.safetensors"
        )
        with _hf_progress_bars_off():
            model = from_pretrained(stage)
            with atomic_directory(out) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                for file in skeleton.iterdir():  # the tokenizer
                    if file.name != "config.json" and file.is_file():
                        shutil.copy(file, tmp / file.name)
    return out


@contextlib.contextmanager
def _hf_progress_bars_off() -> Iterator[None]:
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def export_checkpoint(folder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export checkpoint `folder` (written by any number of processes, DDP or FSDP2) as a Hugging
    Face folder at `out` that `from_pretrained` (after importing the model's package, or through
    `ln_scaling.from_pretrained` / `layerwise.train.load_saved_model`) loads. One process."""
    folder = Path(folder)
    return write_hf_folder(read_model_state(folder), folder / HF, out)
