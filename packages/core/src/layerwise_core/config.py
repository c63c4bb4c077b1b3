"""Configuration base: pydantic models with extra fields forbidden, YAML in/out, `a.b=1` overrides.

    class TrainConfig(LayerwiseConfig):
        lr: float = 1e-3          # peak learning rate
    cfg = TrainConfig.from_yaml("run.yaml", overrides=["lr=3e-4"])

Every error names the dotted field and, for a typo, the closest valid name.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from layerwise_core.atomic_io import atomic_write
from layerwise_core.errors import UsageError

__all__ = ["ConfigError", "LayerwiseConfig", "apply_overrides", "parse_override"]

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(UsageError):
    """A configuration value or key is wrong; the message names the dotted field."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=3e-4"` -> (["train", "lr"], 0.0003). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r} has an empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    # YAML 1.1 reads "1e-3" (no dot) as a string: accept scientific notation as a float
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value):
        value = float(value)
    return keys, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a deep copy of `data` with each `a.b=value` override applied."""
    out = copy.deepcopy(dict(data))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: '{'.'.join(keys[: i + 1])}' is a value, not a section"
                )
            node = child
        node[keys[-1]] = value
    return out


def _model_at(cls: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = cls
    for key in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(key))
        if field is None:
            return None
        current = field.annotation
        if get_origin(current) is not None:  # Optional[Section] and friends
            inner = [
                a for a in get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            current = inner[0] if inner else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _format_errors(cls: type[BaseModel], err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc) or "<root>"
        if item["type"] == "extra_forbidden":
            owner = _model_at(cls, loc[:-1])
            names = list(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = (
                f" (did you mean '{'.'.join(map(str, (*loc[:-1], close[0])))}'?)" if close else ""
            )
            lines.append(f"unknown field '{dotted}'{hint}; valid fields here: {names}")
        else:
            message = item["msg"].removeprefix("Value error, ")  # our validators' own words
            lines.append(f"field '{dotted}': {message} (got {item.get('input')!r})")
    return f"invalid {cls.__name__}: " + "; ".join(lines)


class LayerwiseConfig(BaseModel):
    """Base of every layerwise config: strict keys, YAML round trip, dotted overrides."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()):
        merged = apply_overrides(data or {}, overrides)
        try:
            return cls.model_validate(merged)
        except ValidationError as err:
            raise ConfigError(_format_errors(cls, err)) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Iterable[str] = ()):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: pass an existing YAML file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.MarkedYAMLError as err:  # the position of the problem, 1-based as editors count
            mark = err.problem_mark or err.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise ConfigError(
                f"{where}: invalid YAML ({err.problem or err.context}): fix the syntax there"
            ) from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML ({err}): fix the syntax") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping at the top level: write `section:` keys"
            )
        return cls.from_dict(data, overrides)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            with atomic_write(path, "w") as handle:
                handle.write(text)
        return text

    def with_overrides(self, overrides: Iterable[str]):
        return type(self).from_dict(self.to_dict(), overrides)
