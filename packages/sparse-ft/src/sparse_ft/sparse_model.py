"""PEFT-style API for sparse fine-tuning: config -> `get_sparse_model` -> train -> save / merge.

    model = get_sparse_model(model, LiftConfig(lora_rank=16, filter_rank=8, update_interval=100))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-4, betas=(0.9, 0.95), eps=1e-6)
    for batch in data:
        model(**batch).loss.backward(); opt.step(); opt.zero_grad()
        model.after_optimizer_step(opt)          # LIFT mask refresh / SEFT topology updates
    model.save_pretrained("adapter")             # indices + fp32 values + config, safetensors
    merged = model.merge_and_unload()            # plain HF model with W + delta

Saved layout (`save_pretrained`): `sparse_delta.safetensors` with, per adapted module `name`,
`name.indices` (int64 flat row-major positions of the trainable entries), `name.values` (fp32),
`name.touched_indices` / `name.touched_weights` (positions where the frozen weight itself changed:
folded deltas and SEFT's pruning, with the new weight values in the model's dtype), and the JSON
metadata `{"method", "config", "shapes", "dtypes", "format"}`, repeated in `sparse_config.json`.
`SparseFTModel.from_pretrained(base, path)` re-applies it exactly: the forward and the merged
weights are bit-identical to the saved model's.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from layerwise_core import atomic_write, find_decoder, load_safetensors, save_safetensors
from sparse_ft import seft as _seft
from sparse_ft.lift import LiftConfig, lift_initial_indices, lift_refresh, lift_refresh_due
from sparse_ft.nm_sparsity import is_nm_sparse
from sparse_ft.seft import SeftConfig, seft_budget
from sparse_ft.sparse_delta import SparseDeltaLinear

__all__ = ["SparseFTModel", "get_sparse_model", "target_linear_names"]

FORMAT = "sparse-ft/1"
WEIGHTS_NAME = "sparse_delta.safetensors"
CONFIG_NAME = "sparse_config.json"
_CONFIGS = {"lift": LiftConfig, "seft": SeftConfig}

# SEFT controller phases (a buffer, so that checkpoints resume mid-cycle)
_IDLE, _GROW_NEXT, _PRUNE_NEXT = 0, 1, 2


def target_linear_names(
    model: nn.Module, target_modules: Sequence[str] | str | None = None
) -> list[str]:
    """Names of the nn.Linear modules to adapt.

    None: every nn.Linear inside the decoder blocks (`layerwise_core.find_decoder`), never lm_head.
    A list: PEFT's rule, a name matches when it equals an entry or ends with "." + entry
    (["q_proj", "v_proj"]). A string: a regex that must match the whole name.
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if target_modules is None:
        prefix = find_decoder(model).spec.layers + "."
        names = [n for n in linears if n.startswith(prefix)]
    elif isinstance(target_modules, str):
        names = [n for n in linears if re.fullmatch(target_modules, n)]
    else:
        wanted = list(target_modules)
        names = [n for n in linears if any(n == t or n.endswith("." + t) for t in wanted)]
    if not names:
        raise ValueError(
            f"target_modules={target_modules!r} matches no nn.Linear of {type(model).__name__}; "
            f"Linear modules found: {list(linears)[:8]}..."
        )
    return names


def _config_to_dict(config: LiftConfig | SeftConfig) -> dict[str, Any]:
    """The config as saved: the fields of LiftConfig / SeftConfig in JSON types (target_modules a
    list), as the dataclass configs wrote them; fields a subclass adds (an integration's tag
    `name`) are not saved."""
    own = LiftConfig if isinstance(config, LiftConfig) else SeftConfig
    return config.model_dump(mode="json", include=set(own.model_fields))


def _config_from_dict(method: str, data: dict[str, Any]) -> LiftConfig | SeftConfig:
    """The config of a saved delta (also those saved while the configs were dataclasses)."""
    if method not in _CONFIGS:
        raise ValueError(
            f"unknown sparse fine-tuning method {method!r}: expected one of {list(_CONFIGS)}"
        )
    return _CONFIGS[method].from_dict(data)


class SparseFTModel(nn.Module):
    """A model whose selected Linear layers carry sparse deltas (LIFT or SEFT); everything else frozen.

    Attribute access falls through to the wrapped model (`generate`, `config`, ...), as PEFT's
    `PeftModel` does. Build it with `get_sparse_model` or `SparseFTModel.from_pretrained`.
    """

    def __init__(
        self,
        model: nn.Module,
        config: LiftConfig | SeftConfig,
        indices: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__()
        if not isinstance(config, (LiftConfig, SeftConfig)):
            raise TypeError(
                f"config must be a LiftConfig or SeftConfig, got {type(config).__name__}"
            )
        if any(isinstance(m, SparseDeltaLinear) for m in model.modules()):
            raise ValueError(
                "the model already carries sparse deltas: call merge_and_unload() before wrapping "
                "it again"
            )
        self.base_model = model
        self.config_ = config
        self.method = "lift" if isinstance(config, LiftConfig) else "seft"
        self._frozen_by_us = [p for p in model.parameters() if p.requires_grad]
        for p in self._frozen_by_us:
            p.requires_grad_(False)
        names = (
            list(indices)
            if indices is not None
            else target_linear_names(model, config.target_modules)
        )
        min_zeros = []
        generator = torch.Generator().manual_seed(getattr(config, "seed", 0))
        for name in names:
            linear = model.get_submodule(name)
            if not isinstance(linear, nn.Linear):
                raise TypeError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
            weight = linear.weight.detach()
            if indices is not None:
                chosen = indices[name]
            elif self.method == "lift":
                chosen = lift_initial_indices(weight, config)  # type: ignore[arg-type]
            else:
                chosen = self._seft_initial_indices(name, weight, config, generator)  # type: ignore[arg-type]
            min_zeros.append(int((weight == 0).sum()))
            self._replace(name, SparseDeltaLinear(linear, chosen, backend=config.backend))
        self.register_buffer("sparse_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("seft_phase", torch.zeros((), dtype=torch.long))
        # SEFT: the zero count of each matrix at wrapping, which re-pruning restores
        self.register_buffer("min_zeros", torch.tensor(min_zeros, dtype=torch.long))
        self._collectors: dict[str, Any] = {}
        # optimizer steps over the deltas since the last after_optimizer_step (`_count_step`)
        self._steps_without_refresh_call = 0
        _watch_optimizer_steps(self)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _seft_initial_indices(
        name: str, weight: torch.Tensor, config: SeftConfig, generator: torch.Generator
    ) -> torch.Tensor:
        nm = config.nm
        if nm is not None and not is_nm_sparse(weight, *nm):
            raise ValueError(
                f"{name} is not {config.pattern}-sparse: prune the model first, e.g. "
                f"sparse_ft.prune(model, 'wanda', sparsity=None, pattern={config.pattern!r}, "
                "calibration=...)"
            )
        unpruned = (weight.reshape(-1) != 0).nonzero().squeeze(1)
        k = seft_budget(weight.shape, unpruned.numel(), config.budget_rank)
        pick = torch.randperm(unpruned.numel(), generator=generator)[:k].to(unpruned.device)
        return torch.sort(unpruned[pick]).values

    def _replace(self, name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
        setattr(parent, child, module)

    # ------------------------------------------------------------------ nn.Module plumbing
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def peft_config(self) -> LiftConfig | SeftConfig:
        return self.config_

    def sparse_modules(self) -> dict[str, SparseDeltaLinear]:
        """Adapted modules by their name in the wrapped model."""
        return {
            n: m for n, m in self.base_model.named_modules() if isinstance(m, SparseDeltaLinear)
        }

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The fp32 delta values (what to hand to the optimizer)."""
        for module in self.sparse_modules().values():
            yield module.values

    def num_trainable(self) -> int:
        return sum(m.k for m in self.sparse_modules().values())

    def print_trainable_parameters(self) -> None:
        total = sum(p.numel() for p in self.base_model.parameters())
        k = self.num_trainable()
        print(
            f"trainable params: {k:,} || all params: {total:,} || trainable%: {100 * k / total:.4f}"
        )

    # ------------------------------------------------------------------ training hooks
    @torch.no_grad()
    def after_optimizer_step(
        self, optimizer: torch.optim.Optimizer | None = None
    ) -> dict[str, int]:
        """Call once after every optimizer step (not per micro-batch).

        LIFT: refreshes the masks when due (`lift_refresh_due`). SEFT: runs the drop/grow and
        re-prune phases and arms the backward-time gradient collectors for the next step.
        Returns counts of what changed (empty when nothing did).
        """
        self._steps_without_refresh_call = 0
        self.sparse_step += 1
        step = int(self.sparse_step)
        if self.method == "lift":
            if lift_refresh_due(step, self.config_):  # type: ignore[arg-type]
                return self.refresh_masks(optimizer)
            return {}
        return self._seft_after_step(step, optimizer)

    def _count_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After any optimizer step: count it if it updated the deltas, and warn once the count
        exceeds the refresh interval without a call to `after_optimizer_step`."""
        interval = self.config_.update_interval
        if interval is None:  # a static LIFT mask needs no refresh
            return
        ours = {id(m.values) for m in self.sparse_modules().values()}
        if not any(id(p) in ours for g in optimizer.param_groups for p in g["params"]):
            return
        self._steps_without_refresh_call += 1
        if self._steps_without_refresh_call == interval + 1:
            missed = (
                "the LIFT masks are never refreshed"
                if self.method == "lift"
                else "SEFT's drop / grow / re-prune never runs"
            )
            warnings.warn(
                f"sparse_ft: {interval + 1} optimizer steps without "
                f"model.after_optimizer_step(optimizer), more than update_interval={interval}: "
                f"{missed}. Call model.after_optimizer_step(optimizer) after every "
                "optimizer.step() (HF Trainer: callbacks=[sparse_ft.SparseFTCallback(model)])",
                stacklevel=2,
            )

    @torch.no_grad()
    def refresh_masks(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """LIFT: recompute every mask from the current weights now (moments of survivors kept)."""
        if self.method != "lift":
            raise RuntimeError("refresh_masks is LIFT's; SEFT updates its topology itself")
        totals = {"kept": 0, "arrived": 0, "left": 0}
        for module in self.sparse_modules().values():
            for key, value in lift_refresh(module, self.config_, optimizer).items():  # type: ignore[arg-type]
                totals[key] += value
        return totals

    def _set_collectors(self, collectors: dict[str, Any]) -> None:
        modules = self.sparse_modules()
        for name, module in modules.items():
            module.grad_observer = collectors.get(name)
        self._collectors = collectors

    def _seft_after_step(self, step: int, optimizer) -> dict[str, int]:
        config: SeftConfig = self.config_  # type: ignore[assignment]
        modules = self.sparse_modules()
        order = list(modules)
        out: dict[str, int] = {}
        phase = int(self.seft_phase)
        if phase == _PRUNE_NEXT:
            pruned = 0
            for name, collector in self._collectors.items():
                min_zeros = int(self.min_zeros[order.index(name)])
                pruned += _seft.apply_reprune(modules[name], collector, min_zeros, optimizer)
            out["pruned"] = pruned
            self._set_collectors({})
            phase = _IDLE
        elif phase == _GROW_NEXT:
            reactivated: dict[str, int] = {}
            grown = 0
            for name, collector in self._collectors.items():
                count, reactivated[name] = _seft.apply_growth(
                    modules[name], collector, config.drop_fraction, optimizer
                )
                grown += count
            out["grown"] = grown
            out["reactivated"] = sum(reactivated.values())
            prune_next = {
                name: _seft.PruneCollector(modules[name], count, config.reprune)
                for name, count in reactivated.items()
                if count > 0
            }
            self._set_collectors(prune_next)
            phase = _PRUNE_NEXT if prune_next else _IDLE
        if phase == _IDLE and (step + 1) % config.update_interval == 0:
            exclude_pruned = config.nm is not None
            self._set_collectors(
                {
                    name: _seft.GrowCollector(
                        module, 2 * max(1, int(config.drop_fraction * module.k)), exclude_pruned
                    )
                    for name, module in modules.items()
                }
            )
            phase = _GROW_NEXT
        self.seft_phase.fill_(phase)
        return out

    # ------------------------------------------------------------------ merge / save / load
    @torch.no_grad()
    def merge_and_unload(self) -> nn.Module:
        """Write W + delta into each Linear, put the plain Linears back, return the wrapped model.

        Parameters this wrapper froze get requires_grad back.
        """
        _WATCHED.discard(self)
        for name, module in self.sparse_modules().items():
            module.base_layer.weight.data.copy_(module.effective_weight())
            self._replace(name, module.base_layer)
        for p in self._frozen_by_us:
            p.requires_grad_(True)
        return self.base_model

    def sparse_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, metadata) of the saved layout (module docstring)."""
        tensors: dict[str, torch.Tensor] = {}
        shapes, dtypes = {}, {}
        for name, module in self.sparse_modules().items():
            weight = module.base_layer.weight.detach()
            tensors[f"{name}.indices"] = module.indices
            tensors[f"{name}.values"] = module.values.detach()
            tensors[f"{name}.touched_indices"] = module.touched_indices
            tensors[f"{name}.touched_weights"] = weight.reshape(-1)[module.touched_indices]
            shapes[name] = list(weight.shape)
            dtypes[name] = str(weight.dtype).removeprefix("torch.")
        meta = {
            "format": FORMAT,
            "method": self.method,
            "config": _config_to_dict(self.config_),
            "shapes": shapes,
            "dtypes": dtypes,
        }
        return tensors, meta

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `sparse_delta.safetensors` + `sparse_config.json` (atomically) into the folder."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.sparse_state()
        save_safetensors(tensors, folder / WEIGHTS_NAME, metadata={"sparse_ft": json.dumps(meta)})
        with atomic_write(folder / CONFIG_NAME, "w") as handle:
            handle.write(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, model: nn.Module, pretrained_path: str | os.PathLike) -> SparseFTModel:
        """Wrap `model` (the same base weights the delta was trained on) and re-apply a saved delta."""
        folder = Path(pretrained_path)
        path = folder / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {WEIGHTS_NAME} in {folder}: save one with SparseFTModel.save_pretrained"
            )
        tensors, metadata = load_safetensors(path)
        if "sparse_ft" not in metadata:
            raise ValueError(f"{path} has no sparse_ft metadata: not written by save_pretrained")
        meta = json.loads(metadata["sparse_ft"])
        if meta.get("format") != FORMAT:
            raise ValueError(
                f"{path} has format {meta.get('format')!r}; this version reads {FORMAT}"
            )
        config = _config_from_dict(meta["method"], meta["config"])
        names = list(meta["shapes"])
        for name in names:
            try:
                linear = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"the saved delta adapts {name}, which this model lacks") from None
            if list(linear.weight.shape) != meta["shapes"][name]:
                raise ValueError(
                    f"{name}: saved shape {meta['shapes'][name]} != model shape "
                    f"{list(linear.weight.shape)}: load onto the model the delta was trained on"
                )
            touched = tensors[f"{name}.touched_indices"].to(linear.weight.device)
            with torch.no_grad():
                linear.weight.view(-1)[touched] = tensors[f"{name}.touched_weights"].to(
                    linear.weight.device, linear.weight.dtype
                )
        indices = {name: tensors[f"{name}.indices"] for name in names}
        wrapped = cls(model, config, indices=indices)
        with torch.no_grad():
            for name, module in wrapped.sparse_modules().items():
                module.values.copy_(tensors[f"{name}.values"].to(module.values.dtype))
                module.touched_indices = tensors[f"{name}.touched_indices"].to(
                    module.indices.device
                )
        return wrapped

    def delta_stats(self) -> dict[str, int]:
        """Sizes: trainable entries, positions whose frozen weight changed, adapted weights."""
        modules = self.sparse_modules().values()
        return {
            "trainable": sum(m.k for m in modules),
            "touched": sum(m.touched_indices.numel() for m in modules),
            "adapted_weights": sum(m.base_layer.weight.numel() for m in modules),
        }


_WATCHED: weakref.WeakSet[SparseFTModel] = weakref.WeakSet()  # models whose steps are counted
_STEP_HOOK: Any = None


def _count_steps(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for model in list(_WATCHED):
        model._count_step(optimizer)


def _watch_optimizer_steps(model: SparseFTModel) -> None:
    """Let `model` count the steps of any optimizer holding its deltas (one global torch.optim
    step post-hook for all models, held weakly), so a loop that never calls `after_optimizer_step`
    is reported instead of silently training a stale mask."""
    global _STEP_HOOK
    _WATCHED.add(model)
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_count_steps)


def get_sparse_model(model: nn.Module, config: LiftConfig | SeftConfig) -> SparseFTModel:
    """Wrap `model` for sparse fine-tuning (PEFT's `get_peft_model`): LIFT or SEFT by config type."""
    return SparseFTModel(model, config)
