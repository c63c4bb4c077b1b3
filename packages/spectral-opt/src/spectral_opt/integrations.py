"""Hugging Face `Trainer` callback: AlphaDecay or LayerwiseLR inside `Trainer.train()`.

    from spectral_opt.integrations import SpectralCallback, trainer_optimizer

    trainer = Trainer(model, args, train_dataset=ds,
                      optimizers=(trainer_optimizer(model, args), None),
                      callbacks=[SpectralCallback("alphadecay")])

The Trainer's default optimizer puts all matrices in one param group; AlphaDecay and LayerwiseLR
need one group per module. `trainer_optimizer(model, args)` builds the optimizer the Trainer would
(its `args.optim` class and settings, no decay on biases and norms) with one group per module, and
the Trainer still builds its LR schedule. (The callback cannot split the default optimizer's groups
itself: the Trainer loads a checkpoint's optimizer state before any callback runs, so a resumed
run would fail.) Any torch optimizer with one group per module works too, e.g.
`torch.optim.AdamW(spectral_opt.module_param_groups(model, weight_decay=0.1), lr=1e-3)`. The controller is built at `on_train_begin` (weight decay, learning rate and run length
default to the `TrainingArguments`) and stepped at `on_pre_optimizer_step` with the Trainer's global
step. Each recompute appends `{"step", "alpha/<module>": ...}` to `state.log_history`
(trainer_state.json). With `restore_callback_states_from_checkpoint=True` the controller state
travels with the checkpoints.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from spectral_opt.alphadecay import AlphaDecay
from spectral_opt.layerwise_lr import LayerwiseLR

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "spectral_opt.integrations needs transformers: pip install 'spectral-opt[hf]'"
    ) from error

__all__ = ["SpectralCallback", "trainer_optimizer"]

_METHODS = ("alphadecay", "llr")


def trainer_optimizer(
    model: nn.Module, args: Any, module_types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> torch.optim.Optimizer:
    """The optimizer the HF `Trainer` builds by default (class and settings from `args.optim`,
    `args.weight_decay` on every parameter but biases and norms), with one param group per module
    of `module_types` (for LayerwiseLR: `module_types=(nn.Linear, nn.Embedding)`).

    Pass it as `Trainer(..., optimizers=(trainer_optimizer(model, args), None))`.
    """
    from transformers import Trainer

    # the Trainer's decay rule; the method does not use `self`
    decay_names = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    if not isinstance(optimizer_cls, type) or {"params", "model", "optimizer_dict"} & set(kwargs):
        raise ValueError(
            f"trainer_optimizer builds torch-style optimizers; optim={args.optim!r} builds its own "
            "parameter groups: pass optimizers=(torch.optim.AdamW(spectral_opt."
            "module_param_groups(model, weight_decay=...), lr=...), None) instead"
        )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = {id(p) for n, p in trainable if n in decay_names}
    groups, taken = [], set()
    for name, module in model.named_modules():
        if isinstance(module, module_types):
            own = [
                p for p in module.parameters(recurse=False) if id(p) in decay and id(p) not in taken
            ]
            if own:
                taken.update(id(p) for p in own)
                groups.append(
                    {"params": own, "weight_decay": args.weight_decay, "module_name": name}
                )
    rest = [p for _, p in trainable if id(p) in decay and id(p) not in taken]
    no_decay = [p for _, p in trainable if id(p) not in decay]
    groups += [
        {"params": params, "weight_decay": wd, "module_name": None}
        for params, wd in ((rest, args.weight_decay), (no_decay, 0.0))
        if params
    ]
    return optimizer_cls(groups, **kwargs)


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
        options.setdefault("scheduler", kwargs.get("lr_scheduler"))
        if self.method == "alphadecay":
            options.setdefault("weight_decay", args.weight_decay)
            self.controller = AlphaDecay(optimizer, model, **options)
        else:
            options.setdefault("lr", args.learning_rate)
            options.setdefault("total_steps", state.max_steps)
            self.controller = LayerwiseLR(optimizer, model, **options)
        if self.controller.split_modules:
            types = (
                "" if self.method == "alphadecay" else ", module_types=(nn.Linear, nn.Embedding)"
            )
            self.controller = None
            raise ValueError(
                f"SpectralCallback({self.method!r}) sets one hyper-parameter per module, but the "
                "Trainer's optimizer holds several modules per param group (the Trainer's default "
                "optimizer has one group with decay and one without). Pass Trainer(..., "
                f"optimizers=(spectral_opt.integrations.trainer_optimizer(model, args{types}), "
                "None)): the optimizer the Trainer would build, with one group per module"
            )
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
