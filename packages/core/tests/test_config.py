"""LayerwiseConfig: strict keys, YAML round trip, dotted overrides, errors naming the field."""

from typing import Literal

import pydantic
import pytest

from layerwise_core import ConfigError, LayerwiseConfig, apply_overrides, parse_override


class Optim(LayerwiseConfig):
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


class Train(LayerwiseConfig):
    steps: int = 10
    optim: Optim = Optim()
    norm: Literal["pre_ln", "lns"] = "pre_ln"


def test_overrides_parse_yaml_scalars():
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], 3e-4)
    assert parse_override("steps=5") == (["steps"], 5)
    assert parse_override("optim.betas=[0.8, 0.9]") == (["optim", "betas"], [0.8, 0.9])
    assert parse_override("norm=lns") == (["norm"], "lns")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("steps")


def test_from_dict_with_overrides_and_yaml_round_trip(tmp_path):
    cfg = Train.from_dict({"steps": 3}, ["optim.lr=2e-3", "norm=lns"])
    assert cfg.steps == 3 and cfg.optim.lr == 2e-3 and cfg.norm == "lns"
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert Train.from_yaml(path) == cfg
    assert Train.from_yaml(path, ["steps=7"]).steps == 7
    assert cfg.with_overrides(["optim.betas=[0.5, 0.6]"]).optim.betas == (0.5, 0.6)


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        Train.from_dict({}, ["optim.lrr=1"])
    assert "optim.lrr" in str(info.value) and "did you mean 'optim.lr'" in str(info.value)


def test_bad_value_names_the_field():
    with pytest.raises(ConfigError, match="field 'norm'"):
        Train.from_dict({"norm": "post_ln"})
    with pytest.raises(ConfigError, match="field 'optim.lr'"):
        Train.from_dict({}, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="does not exist"):
        Train.from_yaml("/nonexistent.yaml")


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3\noptim:\n  lr: 1e-3\n betas: [0.9\n")  # line 4: bad indent
    with pytest.raises(ConfigError) as info:
        Train.from_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4:2: invalid YAML (")  # 1-based, as editors count
    assert message.endswith(": fix the syntax there") and "\n" not in message


def test_a_validator_message_is_not_prefixed_by_pydantic():
    class Positive(LayerwiseConfig):
        lr: float = 1.0

        @pydantic.field_validator("lr")
        @classmethod
        def _check(cls, value: float) -> float:
            if value <= 0:
                raise ValueError("lr must be > 0: raise it")
            return value

    with pytest.raises(ConfigError) as info:
        Positive.from_dict({"lr": -1})
    assert str(info.value) == "invalid Positive: field 'lr': lr must be > 0: raise it (got -1)"


def test_config_errors_are_usage_errors():
    from layerwise_core import UsageError

    assert issubclass(ConfigError, UsageError) and issubclass(ConfigError, ValueError)


# --- tagged choices -------------------------------------------------------------------------

from pydantic import Field, model_validator  # noqa: E402

from layerwise_core import TaggedChoice, tagged_choice  # noqa: E402


class Adam(LayerwiseConfig):
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)

    def build(self) -> str:
        return f"adam at {self.lr}"


class Spam(LayerwiseConfig):
    lr: float = 1e-3
    threshold: float = 5000.0


class Norm(LayerwiseConfig):
    """Accepts a bare scheme name, as ln_scaling.NormConfig does."""

    scheme: Literal["pre_ln", "lns"] = "pre_ln"
    fraction: float = 0.25

    @model_validator(mode="before")
    @classmethod
    def _scheme_shorthand(cls, data):
        return {"scheme": data} if isinstance(data, str) else data


class Run(LayerwiseConfig):
    steps: int = 3
    optimizer: tagged_choice({"adamw": Adam, "spam": Spam}, default="adamw")
    spectral: tagged_choice({"none": None, "spam_like": Spam}, default="none")
    norm: Norm = Field(default_factory=Norm)


def test_a_tagged_choice_takes_a_mapping_a_bare_name_no_name_or_an_instance():
    assert Run.from_dict({"optimizer": {"name": "spam", "lr": 2.0}}).optimizer.lr == 2.0
    bare = Run.from_dict({"optimizer": "spam"}).optimizer
    assert (bare.name, bare.lr, bare.threshold) == ("spam", 1e-3, 5000.0)  # Spam's defaults
    unnamed = Run.from_dict({"optimizer": {"lr": 0.5}}).optimizer  # the default choice's
    assert (unnamed.name, unnamed.lr, unnamed.betas) == ("adamw", 0.5, (0.9, 0.999))
    given = Run(optimizer=Spam(threshold=7.0)).optimizer  # a package config instance
    assert (given.name, given.threshold) == ("spam", 7.0)
    assert Run().optimizer == Run.from_dict({"optimizer": "adamw"}).optimizer


def test_the_held_config_is_the_package_class_with_its_methods():
    held = Run().optimizer
    assert isinstance(held, Adam) and held.build() == "adam at 0.001"
    assert type(held) is type(Run.from_dict({"optimizer": {"lr": 2.0}}).optimizer)  # one class
    choice = next(m for m in Run.model_fields["optimizer"].metadata if isinstance(m, TaggedChoice))
    assert choice.configs == {"adamw": Adam, "spam": Spam} and choice.default == "adamw"
    assert choice.classes["spam"].model_fields["name"].default == "spam"
    assert list(Spam.model_fields) == ["lr", "threshold"]  # the package class has no tag


def test_the_dump_puts_the_name_first_and_round_trips(tmp_path):
    cfg = Run.from_dict({"optimizer": {"name": "spam", "threshold": 9.0}, "spectral": "none"})
    data = cfg.to_dict()
    assert data["optimizer"] == {"name": "spam", "lr": 1e-3, "threshold": 9.0}
    assert list(data["optimizer"]) == ["name", "lr", "threshold"]
    assert data["spectral"] == {"name": "none"}  # a choice without fields
    path = tmp_path / "run.yaml"
    cfg.to_yaml(path)
    assert "optimizer:\n  name: spam\n  lr: 0.001\n  threshold: 9.0\n" in path.read_text()
    assert Run.from_yaml(path) == cfg and Run.from_dict(data) == cfg


def test_overrides_reach_inside_a_tagged_choice(tmp_path):
    assert Run.from_dict({}, ["optimizer.lr=3e-3"]).to_dict()["optimizer"] == {
        "name": "adamw",
        "lr": 3e-3,
        "betas": [0.9, 0.999],
    }
    switched = Run.from_dict({}, ["optimizer.name=spam", "optimizer.lr=0.5"]).optimizer
    assert (switched.name, switched.lr, switched.threshold) == ("spam", 0.5, 5000.0)
    path = tmp_path / "run.yaml"
    path.write_text("optimizer: spam\nnorm: lns\n")  # shorthands, opened for the overrides
    cfg = Run.from_yaml(path, ["optimizer.threshold=4", "norm.fraction=0.5"])
    assert (cfg.optimizer.name, cfg.optimizer.threshold) == ("spam", 4.0)
    assert (cfg.norm.scheme, cfg.norm.fraction) == ("lns", 0.5)
    assert Run.from_yaml(path, ["optimizer=adamw"]).optimizer.name == "adamw"
    with pytest.raises(ConfigError, match="'steps' is a value, not a section"):
        Run.from_dict({"steps": 3}, ["steps.x=1"])
    cfg = Run()
    cfg.optimizer = Spam(lr=2.0)  # assignment validates into the tagged class too
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("spam", 2.0)


def test_an_unknown_name_names_the_closest_and_every_choice():
    with pytest.raises(ConfigError) as info:
        Run.from_dict({}, ["optimizer=spamm"])
    assert str(info.value) == (
        "invalid Run: field 'optimizer': unknown name 'spamm' (did you mean 'spam'?): "
        "choose one of adamw, spam (got 'spamm')"
    )
    with pytest.raises(ConfigError, match=r"unknown name 'sgd': choose one of adamw, spam"):
        Run.from_dict({"optimizer": {"name": "sgd"}})
    with pytest.raises(ConfigError, match="expected a choice name or a mapping"):
        Run.from_dict({"optimizer": 3})


def test_errors_inside_a_tagged_choice_name_the_dotted_field_without_the_tag():
    with pytest.raises(ConfigError) as info:
        Run.from_dict({}, ["optimizer.name=spam", "optimizer.treshold=1"])
    assert str(info.value) == (
        "invalid Run: unknown field 'optimizer.treshold' (did you mean 'optimizer.threshold'?); "
        "valid fields here: ['name', 'lr', 'threshold']"
    )
    with pytest.raises(ConfigError, match=r"^invalid Run: field 'optimizer.lr': Input should be"):
        Run.from_dict({}, ["optimizer.lr=-1"])
    with pytest.raises(ConfigError) as info:  # a field of another choice
        Run.from_dict({}, ["spectral.threshold=3"])
    assert "'threshold' is a field of spectral.name=spam_like, not of 'none'" in str(info.value)


def test_a_required_choice_and_a_config_with_its_own_name_field():
    class Needs(LayerwiseConfig):
        optimizer: tagged_choice({"adamw": Adam, "spam": Spam})

    with pytest.raises(ConfigError, match="field 'optimizer': Field required"):
        Needs.from_dict({})
    with pytest.raises(ConfigError, match="no 'name' given: choose one of adamw, spam"):
        Needs.from_dict({"optimizer": {"lr": 1.0}})
    assert Needs.from_dict({"optimizer": "spam"}).optimizer.name == "spam"

    class Named(LayerwiseConfig):
        name: str = "x"

    with pytest.raises(TypeError, match="has a field 'name'"):
        tagged_choice({"named": Named})
    with pytest.raises(ValueError, match="default 'sgd' is not one of"):
        tagged_choice({"adamw": Adam}, default="sgd")


def test_switching_a_choice_by_name_keeps_the_chosen_values_only():
    dumped = Run.from_dict({"optimizer": {"lr": 0.5}}).to_dict()  # betas dumped at the default
    switched = Run.from_dict(dumped, ["optimizer.name=spam"]).optimizer
    assert (switched.name, switched.lr, switched.threshold) == ("spam", 0.5, 5000.0)
    chosen = Run.from_dict({"optimizer": {"betas": [0.8, 0.9]}}).to_dict()
    with pytest.raises(ConfigError, match="'betas' is a field of optimizer.name=adamw"):
        Run.from_dict(chosen, ["optimizer.name=spam"])  # a chosen value the new choice lacks
    whole = Run.from_dict({"optimizer": {"name": "spam", "lr": 0.5}}, ["optimizer=adamw"])
    assert whole.optimizer.lr == 1e-3  # a bare name replaces the section: adamw's defaults
    same = Run.from_dict(dumped, ["optimizer.name=adamw"]).optimizer  # no switch: all kept
    assert (same.lr, same.betas) == (0.5, (0.9, 0.999))
