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
