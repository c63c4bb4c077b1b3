"""The config layout of layerwise before the package-owned configs, read with a `FutureWarning`.

Old YAML files and the `config.yaml` of old run folders keep working: each `migrate_*` takes the
raw mapping of a config (as read from YAML), moves every old key to its new place and warns once,
naming each move. Where the old layout left a value out, the old integration default is filled
in (the new defaults are the packages' own), so a migrated config describes the same run:

    optim.{lr, betas, weight_decay, eps}        -> optimizer.*     (old defaults 1e-3, [0.9, 0.95],
                                                                    0.1, 1e-8)
    optim.{warmup_steps, min_lr_ratio}          -> schedule.*
    optim.grad_clip                             -> train.grad_clip
    optimizer: spam + spam.*                    -> optimizer: {name: spam, ...}   (stable_spam too)
    spectral: llr + spectral_options.*          -> spectral: {name: llr, ...}
    objective: meap + mask_ratio, mask_mode     -> objective: {name: meap, mask_ratio, mask_mode}
    model.norm: lns + model.post_ln_fraction    -> model.norm: {scheme: lns, post_ln_fraction}
    model.quant: int4 + model.quant_*_group_size -> model.quant: {format: int4, *_group_size}
    model.mlp: coe + model.num_experts, ...     -> model.mlp: {name: coe, num_experts, ...}
                                                   (old defaults: 63 experts, 1 shared, top_k 8,
                                                    2 iterations, aux_loss_coef 0.001)
    finetune.method + finetune.{lora,lift,seft} -> method: {name: ..., ...}       (fine-tuning)
    finetune.prune                              -> prune
    optim.* (fine-tuning)                       -> optimizer.* / schedule.warmup_ratio /
                                                   train.grad_clip
    decode: prophet + options.*                 -> decode: {name: prophet, ...}   (eval decode)

Pure functions on mappings: nothing here imports the rest of layerwise.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["migrate_decode", "migrate_finetune", "migrate_model", "migrate_pretrain"]

# what the old integration used where a YAML file gave no value
OLD_PRETRAIN_OPTIMIZER = {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.1, "eps": 1e-8}
OLD_MLP = {
    "num_experts": 63,
    "num_shared_experts": 1,
    "moe_intermediate_size": None,
    "top_k": 8,
    "num_iterations": 2,
    "aux_loss_coef": 0.001,
}
OLD_FINETUNE_OPTIMIZER = {"lr": 2e-4, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.0}
OLD_LIFT = {"lora_rank": 8, "filter_rank": 32, "update_interval": None}
OLD_LORA = {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0}
OLD_PRUNE = {"calibration_sequences": 32}

_SCHEDULE_KEYS = ("warmup_steps", "min_lr_ratio")
_OPTIMIZER_KEYS = ("lr", "betas", "weight_decay", "eps")
_QUANT_KEYS = {
    "quant_weight_group_size": "weight_group_size",
    "quant_act_group_size": "act_group_size",
}
_SPECTRAL_KEYS = {  # the spectral_options each controller took from the old integration
    "alphadecay": ("interval", "ratio", "exclude_first_last", "min_eigs"),
    "llr": ("interval", "ratio", "active_fraction", "ramp_steps", "min_eigs"),
}


class _Moves:
    """The old keys met while migrating one config, warned about together."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.filled: list[str] = []

    def add(self, old: str, new: str) -> None:
        self.items.append(f"{old} -> {new}")

    def fill(self, target: dict[str, Any], key: str, value: Any, new: str) -> None:
        """Set the old layout's default where the file left `new` out."""
        if key not in target:
            target[key] = value
            self.filled.append(f"{new}={value!r}")

    def warn(self, config: str) -> None:
        if self.items or self.filled:
            filled = (
                f"; the old defaults filled in: {', '.join(self.filled)}" if self.filled else ""
            )
            warnings.warn(
                f"{config}: old config keys migrated ({'; '.join(self.items)}{filled}); write "
                f"the new keys instead, the old ones will stop working in a future release "
                f"(`{config}().to_yaml()` shows the layout)",
                FutureWarning,
                stacklevel=4,
            )


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"'{key}' must be a section (key: value pairs), got {value!r}")
    return dict(value)


def _choice(value: Any) -> dict[str, Any]:
    """A tagged choice as a mapping: `"spam"` -> {"name": "spam"}; None -> {}."""
    if value is None:
        return {}
    return {"name": value} if isinstance(value, str) else dict(value)


def _put(target: dict[str, Any], key: str, value: Any, old: str, new: str, moves: _Moves) -> None:
    """Move `old`'s value to `target[key]` (`new` names it). An old key wins over a new one given
    too (an old override on a file in the new layout is the later word), and the warning says so."""
    previous = target.get(key, value)
    target[key] = value
    moves.add(old, new if previous == value else f"{new} (replacing its value {previous!r})")


def migrate_model(
    data: Mapping[str, Any], *, old_defaults: bool = False, moves: _Moves | None = None
) -> dict[str, Any]:
    """The `model:` section in the current layout. `old_defaults`: fill the old integration's
    MoE defaults (also when the section itself holds an old key)."""
    out = copy.deepcopy(dict(data))
    local = moves is None
    moves = moves or _Moves()
    if "post_ln_fraction" in out:
        norm = (
            {"scheme": out["norm"]} if isinstance(out.get("norm"), str) else _section(out, "norm")
        )
        _put(
            norm,
            "post_ln_fraction",
            out.pop("post_ln_fraction"),
            "model.post_ln_fraction",
            "model.norm.post_ln_fraction",
            moves,
        )
        out["norm"] = norm
    if any(key in out for key in _QUANT_KEYS):
        quant = {"format": out["quant"]} if isinstance(out.get("quant"), str) else {}
        quant.update(_section(out, "quant") if isinstance(out.get("quant"), Mapping) else {})
        for old, new in _QUANT_KEYS.items():
            if old in out:
                _put(quant, new, out.pop(old), f"model.{old}", f"model.quant.{new}", moves)
        out["quant"] = quant
    old_mlp = [key for key in OLD_MLP if key in out]
    if old_mlp or (old_defaults and isinstance(out.get("mlp"), str)):
        mlp = _choice(out.get("mlp"))
        name = mlp.get("name", "dense")
        given = {key: out.pop(key) for key in old_mlp}
        if name != "dense":
            if name == "moe":  # a top-k MoE runs one iteration; the old key was ignored
                given.pop("num_iterations", None)
            for key, value in given.items():
                _put(mlp, key, value, f"model.{key}", f"model.mlp.{key}", moves)
            for key, value in OLD_MLP.items():
                if not (name == "moe" and key == "num_iterations"):
                    moves.fill(mlp, key, value, f"model.mlp.{key}")
            out["mlp"] = mlp
        else:
            for key in given:
                moves.add(f"model.{key}", "(dropped: model.mlp is dense)")
    if local:
        moves.warn("ModelConfig")
    return out


def migrate_pretrain(data: Mapping[str, Any]) -> dict[str, Any]:
    """A `PretrainConfig` mapping in the current layout (see the module docstring)."""
    out = copy.deepcopy(dict(data))
    moves = _Moves()
    legacy = any(
        key in out
        for key in ("optim", "spam", "stable_spam", "spectral_options", "mask_ratio", "mask_mode")
    )
    model = _section(out, "model")
    legacy = legacy or any(key in model for key in ("post_ln_fraction", *_QUANT_KEYS, *OLD_MLP))
    if not legacy:
        return out
    if "model" in out:
        out["model"] = migrate_model(model, old_defaults=True, moves=moves)

    optim = _section(out, "optim")
    out.pop("optim", None)
    written = isinstance(out.get("optimizer"), Mapping)  # a section in the new layout already
    optimizer = _choice(out.get("optimizer"))
    name = optimizer.setdefault("name", "adamw")
    for key in _OPTIMIZER_KEYS:
        if key in optim:
            _put(optimizer, key, optim.pop(key), f"optim.{key}", f"optimizer.{key}", moves)
        elif not written:
            moves.fill(optimizer, key, OLD_PRETRAIN_OPTIMIZER[key], f"optimizer.{key}")
    schedule = _section(out, "schedule")
    for key in _SCHEDULE_KEYS:
        if key in optim:
            _put(schedule, key, optim.pop(key), f"optim.{key}", f"schedule.{key}", moves)
    if schedule:
        out["schedule"] = schedule
    if "grad_clip" in optim:
        train = _section(out, "train")
        _put(
            train, "grad_clip", optim.pop("grad_clip"), "optim.grad_clip", "train.grad_clip", moves
        )
        out["train"] = train
    if optim:  # unknown keys: left where the error names them
        out["optim"] = optim
    for section in ("spam", "stable_spam"):
        fields = _section(out, section)
        out.pop(section, None)
        if section == name:
            for key, value in fields.items():
                _put(optimizer, key, value, f"{section}.{key}", f"optimizer.{key}", moves)
        elif fields:
            moves.add(section, f"(dropped: optimizer is {name})")
    out["optimizer"] = optimizer

    options = _section(out, "spectral_options")
    out.pop("spectral_options", None)
    spectral = _choice(out.get("spectral", "none"))
    kind = spectral.get("name", "none")
    known = {key for keys in _SPECTRAL_KEYS.values() for key in keys}
    for key, value in options.items():
        if key in _SPECTRAL_KEYS.get(kind, ()):
            if value is not None:  # null meant "the paper's value": the package's default
                _put(spectral, key, value, f"spectral_options.{key}", f"spectral.{key}", moves)
            else:
                moves.add(f"spectral_options.{key}", f"spectral.{key} (null: its default)")
        elif key in known:
            moves.add(f"spectral_options.{key}", f"(dropped: not used by spectral={kind})")
        else:
            spectral[key] = value  # unknown: the error names spectral.<key>
    if "spectral" in out or spectral.get("name", "none") != "none":
        out["spectral"] = spectral

    objective = _choice(out.get("objective", "ntp"))
    for key in ("mask_ratio", "mask_mode"):
        if key in out:
            value = out.pop(key)
            if objective.get("name", "ntp") == "meap":
                _put(objective, key, value, key, f"objective.{key}", moves)
            else:
                moves.add(key, f"(dropped: objective is {objective.get('name', 'ntp')})")
    if "objective" in out or objective.get("name", "ntp") != "ntp":
        out["objective"] = objective
    moves.warn("PretrainConfig")
    return out


def migrate_finetune(data: Mapping[str, Any]) -> dict[str, Any]:
    """A `FinetuneConfig` mapping in the current layout (see the module docstring)."""
    out = copy.deepcopy(dict(data))
    if "finetune" not in out and "optim" not in out:
        return out
    moves = _Moves()
    old = _section(out, "finetune")
    out.pop("finetune", None)
    written = isinstance(out.get("method"), Mapping)
    method = _choice(out.get("method"))
    name = method.get("name", "lift")
    if "method" in old:
        _put(method, "name", old.pop("method"), "finetune.method", "method.name", moves)
        name = method["name"]
    method["name"] = name
    train = _section(out, "train")
    for section in ("lora", "lift", "seft"):
        fields = dict(old.pop(section, None) or {})
        if section == "lora":  # peft's own names
            renamed = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
            fields = {renamed.get(k, k): v for k, v in fields.items()}
        if section != name:
            if fields:
                moves.add(f"finetune.{section}", f"(dropped: the method is {name})")
            continue
        for key, value in fields.items():
            _put(method, key, value, f"finetune.{section}.{key}", f"method.{key}", moves)
        defaults = {} if written else {"lift": OLD_LIFT, "lora": OLD_LORA}.get(name, {})
        for key, value in defaults.items():
            moves.fill(method, key, value, f"method.{key}")
        if name == "seft" and not written:  # the old SEFT drew its support from train.seed
            moves.fill(method, "seed", train.get("seed", 0), "method.seed (train.seed)")
    out["method"] = method
    if "prune" in old:
        prune = _section(out, "prune")
        for key, value in dict(old.pop("prune") or {}).items():
            _put(prune, key, value, f"finetune.prune.{key}", f"prune.{key}", moves)
        for key, value in OLD_PRUNE.items():
            moves.fill(prune, key, value, f"prune.{key}")
        out["prune"] = prune
    if old:
        out["finetune"] = old  # unknown keys: the error names them

    optim = _section(out, "optim")
    out.pop("optim", None)
    written = isinstance(out.get("optimizer"), Mapping)
    optimizer = _choice(out.get("optimizer"))
    optimizer.setdefault("name", "adamw")
    for key in _OPTIMIZER_KEYS:
        if key in optim:
            _put(optimizer, key, optim.pop(key), f"optim.{key}", f"optimizer.{key}", moves)
        elif not written:
            moves.fill(optimizer, key, OLD_FINETUNE_OPTIMIZER[key], f"optimizer.{key}")
    out["optimizer"] = optimizer
    if "warmup_ratio" in optim:
        schedule = _section(out, "schedule")
        _put(
            schedule,
            "warmup_ratio",
            optim.pop("warmup_ratio"),
            "optim.warmup_ratio",
            "schedule.warmup_ratio",
            moves,
        )
        out["schedule"] = schedule
    if "grad_clip" in optim:
        _put(
            train, "grad_clip", optim.pop("grad_clip"), "optim.grad_clip", "train.grad_clip", moves
        )
    if train:
        out["train"] = train
    if optim:
        out["optim"] = optim
    moves.warn("FinetuneConfig")
    return out


def migrate_decode(data: Mapping[str, Any]) -> dict[str, Any]:
    """A `DecodeConfig` mapping in the current layout: `options:` goes into `decode:`."""
    out = copy.deepcopy(dict(data))
    if "options" not in out:
        return out
    moves = _Moves()
    decode = _choice(out.get("decode", "llada"))
    for key, value in _section(out, "options").items():
        _put(decode, key, value, f"options.{key}", f"decode.{key}", moves)
    out.pop("options")
    out["decode"] = decode
    moves.warn("DecodeConfig")
    return out
