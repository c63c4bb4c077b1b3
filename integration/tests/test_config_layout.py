"""The integration shows no hyper-parameter of a method of its own: every section of the run
configs is either a method package's config (then every default shown equals the package's) or
one of the integration's run sections listed here (data, model size, schedule, training)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from pydantic import BaseModel

from layerwise.eval.decode import DecodeConfig
from layerwise.finetune import FinetuneConfig, LoraConfig
from layerwise.models import QuantConfig
from layerwise.quickstart import QuickstartConfig
from layerwise.train import PretrainConfig
from layerwise_core import TaggedChoice

# the sections the integration owns: how a run is laid out, none a method's hyper-parameters;
# QuantConfig and LoraConfig stand for configs their owners do not have (kernels: plain torch;
# peft: optional) and are checked against their owners below
INTEGRATION_SECTIONS = {
    "PretrainConfig",
    "DataConfig",
    "ModelConfig",
    "QuantConfig",
    "ScheduleConfig",
    "TrainConfig",
    "FinetuneConfig",
    "FinetuneModelConfig",
    "FinetuneDataConfig",
    "LoraConfig",
    "FinetuneScheduleConfig",
    "FinetuneTrainConfig",
    "FinetuneEvalConfig",
    "KDConfig",  # objectives of the fine-tuning loop (issue 23): no package owns them
    "GRPOConfig",
    "DecodeConfig",
}


def sections(cls: type[BaseModel], path: str = ""):
    """(dotted path, class as held, the package's class) of every nested config under `cls`; a
    tagged choice yields one entry per choice (path `optimizer[spam]`)."""
    for key, field in cls.model_fields.items():
        choice = next((m for m in field.metadata if isinstance(m, TaggedChoice)), None)
        if choice is not None:
            for name, held in choice.classes.items():
                source = choice.configs[name]
                yield f"{path}{key}[{name}]", held, source
                if source is not None:
                    yield from sections(source, f"{path}{key}[{name}].")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield f"{path}{key}", field.annotation, field.annotation
            yield from sections(field.annotation, f"{path}{key}.")


RUN_CONFIGS = [PretrainConfig, FinetuneConfig, DecodeConfig]


def method_sections():
    for run in RUN_CONFIGS:
        for path, held, source in sections(run):
            if source is not None and not source.__module__.startswith("layerwise."):
                yield pytest.param(held, source, id=f"{run.__name__}.{path}")


def test_every_section_is_a_package_config_or_a_run_section():
    foreign = []
    for run in RUN_CONFIGS:
        for path, _, source in sections(run):
            if source is None:  # a choice without fields (ntp, none, dense, full)
                continue
            if source.__module__.startswith("layerwise.") and source.__name__ not in (
                INTEGRATION_SECTIONS
            ):
                foreign.append(f"{run.__name__}.{path}: {source.__module__}.{source.__name__}")
    assert not foreign, "integration-owned sections outside INTEGRATION_SECTIONS: " + str(foreign)
    # the method switches are there, and each holds its package's class
    paths = {f"{r.__name__}.{p}": s for r in RUN_CONFIGS for p, _, s in sections(r)}
    assert paths["PretrainConfig.optimizer[spam]"].__module__.startswith("spam_opt")
    assert paths["PretrainConfig.spectral[llr]"].__module__.startswith("spectral_opt")
    assert paths["PretrainConfig.model.norm"].__module__.startswith("ln_scaling")
    assert paths["PretrainConfig.model.mlp[coe]"].__module__.startswith("coe_moe")
    assert paths["PretrainConfig.objective[meap]"].__module__.startswith("meap")
    assert paths["PretrainConfig.model.mlp[relu2]"].__module__.startswith("sparse_ft")
    assert paths["PretrainConfig.model.low_rank"].__module__.startswith("sparse_ft")
    assert paths["PretrainConfig.optimizer[loro]"].__module__.startswith("sparse_ft")
    assert paths["FinetuneConfig.method[seft]"].__module__.startswith("sparse_ft")
    assert paths["FinetuneConfig.prune"].__module__.startswith("sparse_ft")
    assert paths["DecodeConfig.decode[prophet]"].__module__.startswith("dlm_decode")
    assert len(list(method_sections())) >= 17


@pytest.mark.parametrize("held,source", list(method_sections()))
def test_every_default_shown_is_the_package_default(held, source):
    shown = held().model_dump(mode="json")
    shown.pop("name", None)  # the tag, added by tagged_choice
    assert shown == source().model_dump(mode="json")
    assert issubclass(held, source)  # what the run builds is the package's own `build`


def test_the_defaults_of_a_run_are_its_packages_defaults():
    """The sections as a default run holds them (not only their classes)."""
    cfg = PretrainConfig()
    from layerwise_core import AdamWConfig
    from ln_scaling import NormConfig

    assert cfg.model.norm.model_dump() == NormConfig().model_dump()
    optimizer = cfg.optimizer.model_dump()
    assert optimizer.pop("name") == "adamw" and optimizer == AdamWConfig().model_dump()
    assert cfg.objective.name == "ntp" and cfg.spectral.name == "none"
    assert cfg.model.mlp.name == "dense" and cfg.model.quant.format == "none"
    quick = QuickstartConfig().base  # the recipe states the LLM AdamW values it trains with
    assert (quick.optimizer.lr, quick.optimizer.betas, quick.optimizer.weight_decay) == (
        3e-3,
        (0.9, 0.95),
        0.1,
    )


def test_quantisation_defaults_are_apply_fake_quant_defaults():
    from layerwise_kernels import apply_fake_quant

    signature = inspect.signature(apply_fake_quant).parameters
    cfg = QuantConfig()
    for field in ("weight_group_size", "act_group_size"):
        assert getattr(cfg, field) == signature[field].default, field
    assert cfg.format == "none"  # the switch is off unless a run sets it (apply_fake_quant: int4)


def test_lora_defaults_are_peft_defaults():
    peft = pytest.importorskip("peft")
    defaults = {f.name: f.default for f in dataclasses.fields(peft.LoraConfig)}
    cfg = LoraConfig()
    for field in LoraConfig.model_fields:
        assert getattr(cfg, field) == defaults[field], field
    built = cfg.build(["q_proj"])
    assert (built.r, built.lora_alpha, built.bias) == (8, 8, "none")
    assert set(built.target_modules) == {"q_proj"}
