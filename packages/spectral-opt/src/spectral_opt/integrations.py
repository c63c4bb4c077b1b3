"""Hugging Face `Trainer` callback: AlphaDecay or LayerwiseLR inside `Trainer.train()`.

    from spectral_opt import module_param_groups
    from spectral_opt.integrations import SpectralCallback

    optimizer = torch.optim.AdamW(module_param_groups(model, weight_decay=0.1), lr=1e-3)
    trainer = Trainer(model, args, train_dataset=ds, optimizers=(optimizer, None),
                      callbacks=[SpectralCallback("alphadecay")])

The Trainer's default optimizer puts all matrices in one param group; AlphaDecay and LayerwiseLR
need one group per module, hence `optimizers=(optimizer, None)` (the Trainer still builds its LR
schedule). The controller is built at `on_train_begin` (weight decay, learning rate and run length
default to the `TrainingArguments`) and stepped at `on_pre_optimizer_step` with the Trainer's global
step. Each recompute appends `{"step", "alpha/<module>": ...}` to `state.log_history`
(trainer_state.json). With `restore_callback_states_from_checkpoint=True` the controller state
travels with the checkpoints.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from spectral_opt.alphadecay import AlphaDecay
from spectral_opt.layerwise_lr import LayerwiseLR

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "spectral_opt.integrations needs transformers: pip install 'spectral-opt[hf]'"
    ) from error

__all__ = ["SpectralCallback"]

_METHODS = ("alphadecay", "llr")


def _to_json(value: Any) -> Any:
    """dtypes and module classes as strings, so the callback state fits trainer_state.json."""
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, type):
        return f"{value.__module__}:{value.__qualname__}"
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    return value


def _from_json(key: str, value: Any) -> Any:
    if key == "dtype" and isinstance(value, str):
        return getattr(torch, value.removeprefix("torch."))
    if key == "module_types":
        classes = []
        for item in value:
            if isinstance(item, str):
                module, _, qualname = item.partition(":")
                obj: Any = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
                item = obj
            classes.append(item)
        return tuple(classes)
    if key in ("ratio", "pinned") and isinstance(value, list):
        return tuple(value)
    return value


class SpectralCallback(TrainerCallback, ExportableState):
    """Runs `AlphaDecay` ("alphadecay") or `LayerwiseLR` ("llr") in a transformers `Trainer`.

    `controller_kwargs` go to the controller; `weight_decay` (AlphaDecay), `lr` and `total_steps`
    (LayerwiseLR) default to `args.weight_decay`, `args.learning_rate` and `state.max_steps`.
    """

    def __init__(self, method: str = "alphadecay", log_alphas: bool = True, **controller_kwargs):
        if method not in _METHODS:
            raise ValueError(f"unknown spectral method {method!r}; choose one of {_METHODS}")
        self.method = method
        self.log_alphas = log_alphas
        self.controller_kwargs = {k: _from_json(k, v) for k, v in controller_kwargs.items()}
        self.controller: AlphaDecay | LayerwiseLR | None = None
        self.controller_state: dict[str, Any] | None = None  # restored from a checkpoint

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise ValueError("SpectralCallback needs the Trainer's model and optimizer")
        options = dict(self.controller_kwargs)
        if self.method == "alphadecay":
            options.setdefault("weight_decay", args.weight_decay)
            self.controller = AlphaDecay(optimizer, model, **options)
        else:
            options.setdefault("lr", args.learning_rate)
            options.setdefault("total_steps", state.max_steps)
            options.setdefault("scheduler", kwargs.get("lr_scheduler"))
            self.controller = LayerwiseLR(optimizer, model, **options)
        if self.controller_state is not None:
            self.controller.load_state_dict(self.controller_state)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.controller is None:
            return
        if self.controller.step(state.global_step) and self.log_alphas:
            entry = {"step": state.global_step}
            entry.update({f"alpha/{k}": v for k, v in self.controller.alphas.items()})
            state.log_history.append(entry)

    def state(self) -> dict:
        return {
            "args": {
                "method": self.method,
                "log_alphas": self.log_alphas,
                **{k: _to_json(v) for k, v in self.controller_kwargs.items() if k != "scheduler"},
            },
            "attributes": {
                "controller_state": None
                if self.controller is None
                else self.controller.state_dict()
            },
        }
