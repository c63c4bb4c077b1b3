"""Configuration base: pydantic models with extra fields forbidden, YAML in/out, `a.b=1` overrides.

    class TrainConfig(LayerwiseConfig):
        lr: float = 1e-3          # peak learning rate
        optimizer: tagged_choice({"adamw": AdamWConfig, "spam": SPAMConfig}, default="adamw")
    cfg = TrainConfig.from_yaml("run.yaml", overrides=["lr=3e-4", "optimizer.name=spam"])

A *tagged choice* is a section that holds one of several configs, told apart by its key `name`
(`optimizer: {name: spam, lr: 1e-3}`; the bare string `optimizer: spam` means `{name: spam}`).
The configs themselves carry no tag: `tagged_choice` adds it. Every error names the dotted field
(`optimizer.lr`, never the tag) and, for a typo, the closest valid name or key.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_serializer,
)

from layerwise_core.atomic_io import atomic_write
from layerwise_core.errors import UsageError

__all__ = [
    "ConfigError",
    "LayerwiseConfig",
    "TaggedChoice",
    "apply_overrides",
    "parse_override",
    "tagged_choice",
]

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


def apply_overrides(
    data: Mapping[str, Any],
    overrides: Iterable[str],
    config_class: type[BaseModel] | None = None,
) -> dict[str, Any]:
    """Return a deep copy of `data` with each `a.b=value` override applied.

    With `config_class` (the config `data` is meant for), a value given in a shorthand is opened
    into its mapping before an override reaches inside it: `optimizer: spam` with
    `optimizer.lr=1e-3` becomes `{name: spam, lr: 1e-3}`. And `optimizer.name=spam` switches a
    tagged choice keeping the values that differ from the old choice's defaults (those were
    chosen: `lr`, `betas`, ...); the others take the new choice's defaults. (`optimizer=spam`
    replaces the whole section: spam with its own defaults.)
    """
    out = copy.deepcopy(dict(data))
    for text in overrides:
        keys, value = parse_override(text)
        node, owner, choice = out, config_class, None
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                opened = _open_shorthand(owner, key, child)
                if opened is None:
                    raise ConfigError(
                        f"override {text!r}: '{'.'.join(keys[: i + 1])}' is a value, not a section"
                    )
                child = node[key] = opened
            field = owner.model_fields.get(key) if owner is not None else None
            choice = _choice_of(field)
            owner = _section_of(owner, key, child)
            node = child
        if keys[-1] == "name" and choice is not None and len(keys) > 1:
            _drop_old_defaults(node, choice, value)
        node[keys[-1]] = value
    return out


def _drop_old_defaults(node: dict[str, Any], choice: TaggedChoice, new_name: Any) -> None:
    """Before `node` (a tagged choice's mapping) switches to `new_name`: remove the values equal
    to the old choice's defaults, so that the new choice's own defaults apply to them."""
    old = choice.classes.get(node.get("name", choice.default))
    if old is None or new_name == node.get("name", choice.default):
        return
    try:
        defaults = old().model_dump(mode="json")
    except ValidationError:  # a choice with required fields: nothing is a default
        return
    for key in [k for k in node if k != "name" and k in defaults]:
        if node[key] == defaults[key] or _as_json(node[key]) == defaults[key]:
            del node[key]


def _as_json(value: Any) -> Any:
    """Tuples as lists, as `model_dump(mode="json")` writes them."""
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value


def _choice_of(field: Any) -> TaggedChoice | None:
    """The `TaggedChoice` of a pydantic field, if the field is a tagged choice."""
    return next((m for m in getattr(field, "metadata", ()) if isinstance(m, TaggedChoice)), None)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The config class of a section's annotation (`Section`, `Section | None`), else None."""
    if get_origin(annotation) is not None:  # Optional[Section] and friends
        inner = [
            a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        annotation = inner[0] if len(inner) == 1 else None
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _section_of(owner: type[BaseModel] | None, key: str, value: Any) -> type[BaseModel] | None:
    """The config class that validates `value`, the field `key` of `owner` (None if unknown)."""
    if owner is None or key not in owner.model_fields:
        return None
    field = owner.model_fields[key]
    choice = _choice_of(field)
    if choice is not None:
        name = value.get("name", choice.default) if isinstance(value, Mapping) else None
        return choice.classes.get(name) if isinstance(name, str) else None
    return _model_class(field.annotation)


def _open_shorthand(owner: type[BaseModel] | None, key: str, value: Any) -> dict | None:
    """The mapping that a shorthand value of section `key` of `owner` stands for (`"spam"` ->
    `{"name": "spam"}`, `"lns"` -> `{"scheme": "lns"}` where the section accepts it), else None."""
    if owner is None or key not in owner.model_fields:
        return None
    field = owner.model_fields[key]
    choice = _choice_of(field)
    if choice is not None:
        return {"name": value} if isinstance(value, str) else None
    section = _model_class(field.annotation)
    if section is None:
        return None
    try:
        return section.model_validate(value).model_dump(exclude_unset=True)
    except ValidationError:
        return None


def _resolve(
    cls: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[list[str], type[BaseModel] | None, TaggedChoice | None]:
    """Walk an error location: (the dotted path without the tags of tagged choices, the config
    class at the end, the tagged choice that class was chosen from)."""
    shown: list[str] = []
    current: type[BaseModel] | None = cls
    parts, chosen_from = list(loc), None
    while parts:
        key = parts.pop(0)
        shown.append(str(key))
        field = current.model_fields.get(str(key)) if current is not None else None
        if field is None:
            current, chosen_from = None, None
            continue
        choice = _choice_of(field)
        if choice is not None:
            tag = parts.pop(0) if parts else None  # pydantic puts the tag into the location
            current, chosen_from = choice.classes.get(tag), choice
        else:
            current, chosen_from = _model_class(field.annotation), None
    return shown, current, chosen_from


def _format_errors(cls: type[BaseModel], err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            shown, owner, choice = _resolve(cls, loc[:-1])
            key, dotted = str(loc[-1]), ".".join([*shown, str(loc[-1])])
            names = list(owner.model_fields) if owner else []
            if choice is not None:  # the tag first, as in the YAML
                names = ["name", *(n for n in names if n != "name")]
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{'.'.join([*shown, close[0]])}'?)" if close else ""
            if choice is not None and owner is not None and not close:
                others = [n for n, c in choice.classes.items() if key in c.model_fields]
                if others:
                    current = owner.model_fields["name"].default
                    hint = (
                        f" ('{key}' is a field of {'.'.join(shown)}.name={' | '.join(others)}, "
                        f"not of {current!r})"
                    )
            lines.append(f"unknown field '{dotted}'{hint}; valid fields here: {names}")
        else:
            dotted = ".".join(_resolve(cls, loc)[0])
            message = item["msg"].removeprefix("Value error, ")  # our validators' own words
            if not dotted:  # a check across fields: its message names them (no dump of it all)
                lines.append(message)
                continue
            lines.append(f"field '{dotted}': {message} (got {item.get('input')!r})")
    return f"invalid {cls.__name__}: " + "; ".join(lines)


class LayerwiseConfig(BaseModel):
    """Base of every layerwise config: strict keys, YAML round trip, dotted overrides."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()):
        merged = apply_overrides(data or {}, overrides, cls)
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


class _Tagged(LayerwiseConfig):
    """Mixed into the classes `tagged_choice` makes: the tag `name` comes first when dumped."""

    @model_serializer(mode="wrap")
    def _name_first(self, handler):
        data = handler(self)
        if isinstance(data, dict) and "name" in data:
            data = {"name": data.pop("name"), **data}
        return data


@functools.cache
def _tagged_class(name: str, config: type[BaseModel] | None) -> type[LayerwiseConfig]:
    """`config` with the field `name: Literal[name]` added (a subclass: it builds what `config`
    builds); a config without fields for None. One class per (name, config)."""
    if config is not None and "name" in config.model_fields:
        raise TypeError(
            f"{config.__name__} has a field 'name', which tagged_choice uses as the tag: rename it"
        )
    tag = (Literal[name], Field(name, description="which choice this section holds"))
    if config is None:
        title = "".join(part.title() for part in re.split(r"[^0-9a-zA-Z]+", name)) or "Choice"
        return create_model(f"{title}Choice", __base__=_Tagged, name=tag)
    return create_model(
        config.__name__, __base__=(config, _Tagged), __module__=config.__module__, name=tag
    )


class TaggedChoice:
    """What `tagged_choice` knows about a field (kept in the field's metadata): the choices, the
    class that validates each (`classes`: the given config with its tag), the default name."""

    def __init__(self, choices: Mapping[str, type[BaseModel] | None], default: str | None) -> None:
        if not choices:
            raise ValueError("tagged_choice needs at least one choice")
        if default is not None and default not in choices:
            raise ValueError(f"tagged_choice default {default!r} is not one of {list(choices)}")
        self.configs = dict(choices)  # name -> the package's config class, or None
        self.classes = {n: _tagged_class(n, c) for n, c in choices.items()}
        self.default = default

    def __repr__(self) -> str:
        return f"TaggedChoice({list(self.classes)}, default={self.default!r})"

    def name_of(self, config: BaseModel) -> str | None:
        """The name under which a config instance (tagged or the package's own) is a choice."""
        for name, cls in self.classes.items():
            if type(config) is cls or (self.configs[name] is type(config)):
                return name
        return None

    def normalise(self, value: Any) -> Any:
        """Before validation: a bare name -> `{name: ...}`; a mapping without `name` -> the
        default's; a package config instance -> its tagged mapping; an unknown name -> an error
        with the closest name and the choices."""
        if isinstance(value, BaseModel):
            if type(value) in self.classes.values():
                return value
            name = self.name_of(value)
            if name is None:
                raise ValueError(
                    f"a {type(value).__name__} is none of the choices: "
                    f"give one of {self._listing()}"
                )
            return {"name": name, **{k: getattr(value, k) for k in type(value).model_fields}}
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise ValueError(
                f"expected a choice name or a mapping with its 'name', got {value!r}: "
                f"give one of {self._listing()}"
            )
        name = value.get("name", self.default)
        if name is None:
            raise ValueError(f"no 'name' given: choose one of {self._listing()}")
        if not isinstance(name, str) or name not in self.classes:
            close = difflib.get_close_matches(str(name), list(self.classes), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown name {name!r}{hint}: choose one of {self._listing()}")
        return {**value, "name": name}

    def _listing(self) -> str:
        return ", ".join(self.classes)


def tagged_choice(choices: Mapping[str, type[BaseModel] | None], default: str | None = None) -> Any:
    """The annotation of a section that holds one of several configs, told apart by `name`.

        optimizer: tagged_choice({"adamw": AdamWConfig, "spam": SPAMConfig}, default="adamw")
        spectral: tagged_choice({"none": None, "llr": LayerwiseLRConfig}, default="none")

    `choices` maps each name to the config class of that choice (None: a choice without
    fields, dumped as `{name: none}`). The field accepts `{name: spam, lr: 1e-3}`, the bare
    string `spam` (`{name: spam}`), a mapping without `name` (the default's), or an instance of a
    listed config class; it holds an instance of a subclass of the listed class with the field
    `name` added, so `cfg.optimizer.build(...)` is the package's own `build`. An unknown name is an
    error naming the closest one and every choice. `default`: the name whose default config the
    field takes when left out (None: the field is required).
    """
    choice = TaggedChoice(choices, default)
    members = tuple(choice.classes.values())
    union = members[0] if len(members) == 1 else Union[members]  # noqa: UP007 (a runtime tuple)
    extras: list[Any] = [BeforeValidator(choice.normalise), choice]
    if len(members) > 1:
        extras.insert(0, Field(discriminator="name"))
    if default is not None:
        extras.append(Field(default_factory=choice.classes[default]))
    return Annotated[(union, *extras)]
