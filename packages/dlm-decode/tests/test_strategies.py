"""The strategy configs: one per strategy, their defaults are the strategies' constructor defaults
(and the reference code's), build() == make_strategy == the dataclass, bad options are named."""

import dataclasses
import inspect
import typing

import pytest

from dlm_decode import (
    SOAR,
    STRATEGIES,
    STRATEGY_CONFIGS,
    Dream,
    DreamConfig,
    ElasticCache,
    ElasticCacheConfig,
    FastDLLM,
    FastDLLMConfig,
    LLaDA,
    LLaDAConfig,
    ParallelForced,
    ParallelForcedConfig,
    Prophet,
    ProphetConfig,
    SOARBeam,
    SOARBeamConfig,
    SOARConfig,
    StagedThresholds,
    make_strategy,
)
from dlm_decode.dream import DREAM_ALGORITHMS
from layerwise_core import ConfigError
from layerwise_kernels._backend import BACKENDS

STATE = {"gap_history", "beam_history", "refresh_log"}  # per-run records: fields, not options


def _options(strategy):
    return [f.name for f in dataclasses.fields(strategy) if f.init and f.name not in STATE]


def test_one_config_per_strategy_with_the_same_options():
    assert list(STRATEGY_CONFIGS) == list(STRATEGIES)
    pairs = {"llada": LLaDAConfig, "prophet": ProphetConfig, "fast_dllm": FastDLLMConfig}
    pairs |= {"dream": DreamConfig, "soar": SOARConfig, "soar_beam": SOARBeamConfig}
    pairs |= {"elastic_cache": ElasticCacheConfig, "parallel_forced": ParallelForcedConfig}
    assert pairs == STRATEGY_CONFIGS
    for name, strategy in STRATEGIES.items():
        assert list(STRATEGY_CONFIGS[name].model_fields) == _options(strategy), name


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_config_defaults_equal_the_constructor_defaults(name):
    strategy, config = STRATEGIES[name], STRATEGY_CONFIGS[name]
    parameters = inspect.signature(strategy).parameters
    built = strategy()
    for option in _options(strategy):
        default = parameters[option].default
        if default is dataclasses._HAS_DEFAULT_FACTORY:  # thresholds: compare the made objects
            default = getattr(built, option)
        assert default == getattr(config(), option), (name, option)


def test_defaults_are_the_reference_codes():
    # values as stated in the spec (dlm-decode.md) from each released code
    assert StagedThresholds() == StagedThresholds(7.5, 5.0, 2.5, 0.33, 0.67)  # Prophet eval_llada
    assert ProphetConfig().answer_length == 5 and ProphetConfig().region == "answer"
    assert FastDLLMConfig().threshold == 0.9 and FastDLLMConfig().factor is None
    dream = DreamConfig()  # DreamGenerationConfig
    assert (dream.alg, dream.steps, dream.temperature, dream.eps) == ("origin", 512, 0.0, 1e-3)
    soar = SOARConfig()  # generate_soar's constants
    assert (soar.confidence_threshold, soar.min_parallel_tokens) == (0.95, 1)
    assert (soar.max_parallel_tokens, soar.max_beam_size) == (5, 2)
    # the choices offered are the ones the samplers accept
    assert typing.get_args(DreamConfig.model_fields["alg"].annotation) == DREAM_ALGORITHMS
    for config in (LLaDAConfig, FastDLLMConfig):
        assert typing.get_args(config.model_fields["backend"].annotation) == BACKENDS


OPTIONS = {
    "llada": {"steps": 64, "block_length": 8, "temperature": 0.5, "remasking": "random"},
    "prophet": {"steps": 16, "region": "block", "thresholds": {"early": 9.0}, "answer_start": 3},
    "fast_dllm": {"block_length": 8, "threshold": None, "factor": 1.5, "cache": "dual"},
    "dream": {"steps": 8, "alg": "entropy", "temperature": 0.2, "top_p": 0.95},
    "soar": {"steps": 16, "cfg_scale": 0.5, "max_parallel_tokens": 3, "max_beam_size": 4},
    "soar_beam": {"steps": 16, "beam_width": 3, "branch_factor": 2, "confidence_threshold": None},
    "elastic_cache": {"gamma": 0.5, "window": 8, "threshold": 0.7, "track_num": 2},
    "parallel_forced": {"tokens_per_step": 4, "segments": (4, 12), "summary_last": True},
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_build_equals_make_strategy_equals_the_dataclass(name):
    options = OPTIONS[name]
    built = STRATEGY_CONFIGS[name](**options).build()
    assert type(built) is STRATEGIES[name]
    assert built == make_strategy(name, **options)
    direct = dict(options)
    if isinstance(direct.get("thresholds"), dict):
        direct["thresholds"] = StagedThresholds(**direct["thresholds"])
    assert built == STRATEGIES[name](**direct)
    for option, value in direct.items():
        assert getattr(built, option) == value, option
    assert STRATEGY_CONFIGS[name]().build() == STRATEGIES[name]()


def test_yaml_round_trip_and_overrides_reach_prophets_thresholds(tmp_path):
    config = ProphetConfig(steps=16, thresholds=StagedThresholds(early=9.0), region="block")
    config.to_yaml(tmp_path / "prophet.yaml")
    assert ProphetConfig.from_yaml(tmp_path / "prophet.yaml") == config
    changed = config.with_overrides(["thresholds.late=1.0", "answer_length=3"])
    assert changed.build().thresholds == StagedThresholds(early=9.0, late=1.0)
    assert changed.build().answer_length == 3


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        (
            "prophet",
            {"stpes": 3},
            r"unknown field 'stpes' \(did you mean 'steps'\?\); valid fields",
        ),
        ("fast_dllm", {"treshold": 0.8}, r"did you mean 'threshold'.*'block_length', 'threshold'"),
        (
            "prophet",
            {"thresholds": {"erly": 8}},
            r"unknown threshold 'erly' \(did you mean 'early'",
        ),
        ("llada", {"steps": 0}, r"field 'steps': Input should be greater than or equal to 1"),
        ("llada", {"remasking": "lowest"}, r"field 'remasking'.*'low_confidence' or 'random'"),
        ("fast_dllm", {"cache": "full"}, r"field 'cache'"),
        ("fast_dllm", {"threshold": None}, r"fixed schedule needs steps"),
        ("dream", {"top_p": 0.0}, r"field 'top_p'"),
        ("soar", {"min_parallel_tokens": 6}, r"exceeds max_parallel_tokens 5"),
    ],
)
def test_a_bad_option_is_a_clear_error(name, options, match):
    with pytest.raises(ConfigError, match=match):
        make_strategy(name, **options)


def test_unknown_strategy_name_suggests_the_closest():
    with pytest.raises(ValueError, match=r"'profet' \(did you mean 'prophet'\?\): choose one of"):
        make_strategy("profet")


@pytest.mark.parametrize(
    "build",
    [
        lambda: LLaDA(steps=0),
        lambda: Prophet(region="everywhere"),
        lambda: FastDLLM(threshold=1.5),
        lambda: Dream(alg="greedy"),
        lambda: SOAR(max_beam_size=0),
        lambda: SOARBeam(beam_width=0),
        lambda: ElasticCache(gamma=-0.5),
        lambda: ParallelForced(tokens_per_step=0),
    ],
)
def test_the_dataclasses_check_their_fields_with_their_config(build):
    with pytest.raises(ConfigError, match="invalid [A-Za-z]+Config: field"):
        build()
