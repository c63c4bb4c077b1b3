"""AlphaDecayConfig / LayerwiseLRConfig: the papers' defaults equal the controllers' constructor
defaults; `param_groups` + `build` give the controller a hand construction gives (same weight
decays, LRs and parameters step by step on a tiny HF Llama); the base value is read from the
optimizer or refused when ambiguous; bad values are refused with the field named."""

import inspect
import math

import pytest
import torch
from torch import nn

from layerwise_core import ConfigError, module_param_groups, tiny_llama, tiny_qwen2
from spectral_opt import AlphaDecay, AlphaDecayConfig, LayerwiseLR, LayerwiseLRConfig

SIZE = dict(hidden_size=64, intermediate_size=128, vocab_size=96)  # q/o/MLP have >= 50 eigenvalues
WD, LR, STEPS = 0.1, 1e-3, 6

# constructor arguments that are not hyper-parameters of the method (objects of the run) or that
# the config reads from the optimizer (`weight_decay` / `lr`: None = the optimizer's base)
NOT_FIELDS = {
    AlphaDecay: {"optimizer", "model", "module_types", "dtype", "scheduler"},
    LayerwiseLR: {"optimizer", "model", "module_types", "dtype", "scheduler", "total_steps"},
}
BASE_FIELD = {AlphaDecay: "weight_decay", LayerwiseLR: "lr"}


@pytest.mark.parametrize(
    ("config_cls", "controller"), [(AlphaDecayConfig, AlphaDecay), (LayerwiseLRConfig, LayerwiseLR)]
)
def test_defaults_equal_the_constructor_defaults(config_cls, controller):
    params = inspect.signature(controller.__init__).parameters
    fields = config_cls.model_fields
    base = BASE_FIELD[controller]
    # every hyper-parameter of the constructor is a field, and every field an argument
    assert set(params) - {"self"} - NOT_FIELDS[controller] == set(fields)
    for name, field in fields.items():
        if name == base:
            assert field.default is None and params[name].default is inspect.Parameter.empty
            continue
        assert field.default == params[name].default, name


def test_the_papers_values():
    # spec: AlphaDecay ratio (0.6666, 3), every 500 steps, first and last Linear excluded,
    # N < 50 skipped; LLR scripts: ratio (1, 5), every 100 steps during 20% of the run, 50-step ramp
    ad, llr = AlphaDecayConfig(), LayerwiseLRConfig()
    assert (ad.ratio, ad.interval, ad.exclude_first_last, ad.min_eigs) == (
        (0.6666, 3.0),
        500,
        True,
        50,
    )
    assert (llr.ratio, llr.interval, llr.active_fraction, llr.ramp_steps) == (
        (1.0, 5.0),
        100,
        0.2,
        50,
    )
    assert (llr.exclude_first_last, llr.pinned, llr.min_eigs) == (False, ("embed", "head"), 50)
    assert ad.fit == llr.fit == "median"


@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2])
def test_param_groups(factory):
    model = factory(**SIZE)
    groups = AlphaDecayConfig().param_groups(model, weight_decay=WD)
    held = [id(p) for g in groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())  # each parameter once
    modules = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    modules = [n for n in modules if n != "lm_head" or not model.config.tie_word_embeddings]
    assert [g["module_name"] for g in groups] == [*modules, None]  # one per module + the rest
    for group in groups:
        module = None if group["module_name"] is None else model.get_submodule(group["module_name"])
        has_bias = module is not None and getattr(module, "bias", None) is not None
        expected = WD if module is not None and not has_bias else 0.0  # norms, biases: no decay
        assert group["weight_decay"] == expected, group["module_name"]
        names = [n for n, p in model.named_parameters() if any(p is q for q in group["params"])]
        assert group["param_names"] == names
    again = LayerwiseLRConfig().param_groups(model, WD)  # both controllers: the same groups
    summary = [(g["module_name"], g["weight_decay"], g["param_names"]) for g in groups]
    assert [(g["module_name"], g["weight_decay"], g["param_names"]) for g in again] == summary
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        AlphaDecayConfig().param_groups(model, -1.0)


def _warmup_cosine(step, warmup=2, total=STEPS):
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _hand_groups(model):
    # what layerwise's train/optimizers.py param_groups did for spectral runs before the config
    groups = module_param_groups(model, module_types=(nn.Linear, nn.Embedding))
    for group in groups:
        group["weight_decay"] = WD if all(p.dim() >= 2 for p in group["params"]) else 0.0
    return groups


def _run(model, optimizer, scheduler, controller):
    """STEPS training steps; per step the (weight_decay, lr) of every group."""
    g = torch.Generator().manual_seed(1)
    seen = []
    for _ in range(STEPS):
        ids = torch.randint(0, SIZE["vocab_size"], (2, 12), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        controller.step()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        seen.append([(grp["weight_decay"], grp["lr"]) for grp in optimizer.param_groups])
    return seen


def _setup(groups_fn):
    model = tiny_llama(**SIZE)
    optimizer = torch.optim.AdamW(groups_fn(model), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine)
    return model, optimizer, scheduler


@pytest.mark.parametrize("overrides", [{}, {"interval": 2}])
def test_alphadecay_build_equals_hand_construction(overrides):
    cfg = AlphaDecayConfig(**overrides)
    model, optimizer, scheduler = _setup(lambda m: cfg.param_groups(m, WD))
    built = cfg.build(optimizer, model)
    seen = _run(model, optimizer, scheduler, built)

    hand_model, hand_opt, hand_sched = _setup(_hand_groups)
    hand = AlphaDecay(
        hand_opt,
        hand_model,
        WD,
        ratio=(0.6666, 3.0),
        interval=overrides.get("interval", 500),
        exclude_first_last=True,
        min_eigs=50,
    )
    hand_seen = _run(hand_model, hand_opt, hand_sched, hand)

    assert built.weight_decay == WD  # read from the groups
    assert built.tuned_modules == hand.tuned_modules and built.tuned_modules
    assert [t for t, _ in built.history] == [t for t, _ in hand.history]
    assert [t for t, _ in built.history] == ([0, 1, 3, 5] if overrides else [0])
    assert seen == hand_seen
    assert len({wd for wd, _ in seen[-1]}) > 3  # the weight decays were set per module
    for p, q in zip(model.parameters(), hand_model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "overrides", [{}, {"interval": 2, "ramp_steps": 2, "active_fraction": 1.0}]
)
def test_layerwise_lr_build_equals_hand_construction(overrides):
    cfg = LayerwiseLRConfig(**overrides)
    model, optimizer, scheduler = _setup(lambda m: cfg.param_groups(m, WD))
    built = cfg.build(optimizer, model, total_steps=STEPS, scheduler=scheduler)
    seen = _run(model, optimizer, scheduler, built)

    hand_model, hand_opt, hand_sched = _setup(_hand_groups)
    hand = LayerwiseLR(
        hand_opt,
        hand_model,
        LR,
        ratio=(1.0, 5.0),
        interval=overrides.get("interval", 100),
        active_fraction=overrides.get("active_fraction", 0.2),
        total_steps=STEPS,
        ramp_steps=overrides.get("ramp_steps", 50),
        scheduler=hand_sched,
        min_eigs=50,
    )
    hand_seen = _run(hand_model, hand_opt, hand_sched, hand)

    assert built.lr == LR  # the scheduler's peak
    assert [t for t, _ in built.history] == [t for t, _ in hand.history]
    # defaults: 20% of 6 steps -> only step 0; overrides: (step + 1) % 2 == 0 all run long
    assert [t for t, _ in built.history] == ([0, 1, 3, 5] if overrides else [0])
    assert seen == hand_seen
    assert len({lr for _, lr in seen[-1]}) > 3  # the LRs were set per module
    for p, q in zip(model.parameters(), hand_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_base_value_from_the_optimizer_or_the_field():
    model = tiny_llama(**SIZE)
    cfg = AlphaDecayConfig()
    optimizer = torch.optim.AdamW(cfg.param_groups(model, WD), lr=LR)
    assert AlphaDecayConfig(weight_decay=0.05).build(optimizer, model).weight_decay == 0.05
    optimizer.param_groups[3]["weight_decay"] = 0.3  # as after loading AlphaDecay's state
    with pytest.raises(ValueError, match=r"different weight decays \(0.1, 0.3\).*weight_decay="):
        cfg.build(optimizer, model)

    model = tiny_llama(**SIZE)
    optimizer = torch.optim.AdamW(LayerwiseLRConfig().param_groups(model, WD), lr=LR)
    assert LayerwiseLRConfig().build(optimizer, model, total_steps=10).lr == LR  # no scheduler
    optimizer.param_groups[2]["lr"] = 5 * LR
    with pytest.raises(ValueError, match=r"different peak learning rates.*lr="):
        LayerwiseLRConfig().build(optimizer, model, total_steps=10)
    assert LayerwiseLRConfig(lr=2e-3).build(optimizer, model, total_steps=10).lr == 2e-3
    with pytest.raises(ValueError, match="pass total_steps"):
        LayerwiseLRConfig(lr=2e-3).build(optimizer, model, total_steps=None)


@pytest.mark.parametrize(
    ("config_cls", "data", "message"),
    [
        (AlphaDecayConfig, {"ratio": [3.0, 0.6666]}, r"field 'ratio'.*0 <= r_min <= r_max"),
        (AlphaDecayConfig, {"ratio": [1.0]}, r"field 'ratio.1': Field required"),
        (AlphaDecayConfig, {"interval": 0}, r"field 'interval'.*greater than or equal to 1"),
        (AlphaDecayConfig, {"min_eigs": 1}, r"field 'min_eigs'"),
        (AlphaDecayConfig, {"weight_decay": -0.1}, r"field 'weight_decay'"),
        (AlphaDecayConfig, {"fit": "mle"}, r"field 'fit'"),
        (AlphaDecayConfig, {"xmin_pos": 0.5}, r"field 'xmin_pos'"),
        (
            AlphaDecayConfig,
            {"intervall": 5},
            r"unknown field 'intervall' \(did you mean 'interval'\?\)",
        ),
        (LayerwiseLRConfig, {"ratio": [0.0, 5.0]}, r"field 'ratio'.*0 < r_min <= r_max"),
        (LayerwiseLRConfig, {"active_fraction": 0.0}, r"field 'active_fraction'"),
        (LayerwiseLRConfig, {"active_fraction": 1.5}, r"field 'active_fraction'"),
        (LayerwiseLRConfig, {"ramp_steps": -1}, r"field 'ramp_steps'"),
        (LayerwiseLRConfig, {"embed_lr": 0.0}, r"field 'embed_lr'"),
        (LayerwiseLRConfig, {"lr": 0.0}, r"field 'lr'"),
        (LayerwiseLRConfig, {"weight_decay": 0.1}, r"unknown field 'weight_decay'"),
    ],
)
def test_validation_errors(config_cls, data, message):
    with pytest.raises(ConfigError, match=message):
        config_cls.from_dict(data)


def test_round_trip_and_official_fit_names():
    cfg = LayerwiseLRConfig(ratio=(0.666, 3.0), include=["mlp"], fit="goodness-of-fit", lr=5e-4)
    assert cfg.fit == "goodness_of_fit"  # the official spelling names the same fit
    assert LayerwiseLRConfig.from_dict(cfg.to_dict()) == cfg  # YAML / JSON lists back to tuples
    assert AlphaDecayConfig.from_dict({}, overrides=["interval=250", "ratio=[0.5,2]"]).ratio == (
        0.5,
        2.0,
    )
